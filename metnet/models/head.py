"""Output head: crop the target region of the latent, upsample, predict bin logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metnet.models.conditioning import FiLM, modulate
from metnet.models.downsampler import packed_conv
from metnet.models.prior import ExtrapolationPrior


def _upsample_stage(c_in: int, c_out: int) -> nn.Sequential:
    """2x upsampling: 1x1 conv to 4 c_out channels, pixel shuffle, then a 3x3 conv."""
    stage = nn.Sequential(
        nn.Conv2d(c_in, 4 * c_out, 1),
        nn.PixelShuffle(2),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GELU(),
    )
    for conv in (stage[0], stage[3]):  # He init keeps the latent's signal through the stack
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    return stage


def _pixel_product(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """``weight`` (O, c) times each pixel's channels of x (N, c, h, w), plus ``bias``: (N h w,
    O), each pixel's outputs contiguous. A 1x1 convolution in channels-last layout (the
    features' own, read in place): on an AMD CPU oneDNN's took a quarter to a third less time
    in the decoder than MKL's matrix product of the same shape, whose inner dimension is only c
    (BENCHMARKS.md)."""
    if not len(weight):  # no outputs (a pinned prior without the error ensemble mixes none)
        return x.new_empty(x.shape[0] * x.shape[2] * x.shape[3], 0)
    out = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight[:, :, None, None],
                   bias)
    return out.permute(0, 2, 3, 1).reshape(-1, len(weight))


def _block_logits(weight: Tensor, bias: Tensor, x: Tensor, pack: int) -> Tensor:
    """The 1x1 convolution (``weight`` (O p^2, c), ``bias`` (O p^2,)) of features x (N, c, h,
    w) whose output channels are, in pixel-shuffle order (channel o p^2 + i p + j), the
    outputs of each p x p block of output pixels (p = ``pack``): as (N, h, w, p, p, O), each
    pixel's O outputs contiguous (the weight rows reordered, so trained weights keep their
    meaning)."""
    n, c, h, w = x.shape
    outputs = len(weight) // pack**2
    weight = weight.view(outputs, pack, pack, c).permute(1, 2, 0, 3).reshape(-1, c)
    bias = bias.view(outputs, pack, pack).permute(1, 2, 0).reshape(-1)
    return _pixel_product(weight, bias, x).view(n, h, w, pack, pack, outputs)


def _subpixel_planes(weight: Tensor, bias: Tensor, x: Tensor, pack: int) -> Tensor:
    """The same convolution as :func:`_block_logits`, its outputs as contiguous planes (N, O,
    h p, w p): for a few outputs, a copy that keeps each plane's rows whole is several times
    faster than moving O values per pixel."""
    n, _, h, w = x.shape
    outputs = len(weight) // pack**2
    out = _pixel_product(weight, bias, x).view(n, h, w, outputs, pack, pack)
    return out.permute(0, 3, 1, 4, 2, 5).reshape(n, outputs, h * pack, w * pack)


def _unblocked(blocks: Tensor) -> Tensor:
    """Outputs (N, h, w, p, p, O) of p x p blocks as (N, O, h p, w p), the outputs last in
    memory."""
    n, h, w, p, _, o = blocks.shape
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, h * p, w * p, o).permute(0, 3, 1, 2)


def _softmax_of_bins(logits: Tensor) -> Tensor:
    """The softmax of logits (N, K, H, W) over the bins, in their layout (bins last in
    memory stay last)."""
    return torch.softmax(logits.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)


def _aligned_blocks(full: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Views (N, H / p, p, W / p, p, K) of full (N, K, H, W), the bins last in memory, and
    of blocks (N, H / p, W / p, p, p, K) whose elements are those of ``full`` and
    ``_unblocked(blocks)`` at the same place: an elementwise operation of the two runs
    along contiguous rows of p K values on both sides."""
    n, k, h, w = full.shape
    p = blocks.shape[3]
    return (full.permute(0, 2, 3, 1).view(n, h // p, p, w // p, p, k),
            blocks.permute(0, 1, 3, 2, 4, 5))


def _add_blocks(full: Tensor, blocks: Tensor) -> Tensor:
    """``full + _unblocked(blocks)``, full (N, K, H, W) in any layout, blocks (N, H / p,
    W / p, p, p, K): one pass, in place on ``full`` when no gradient is recorded (its K
    values per pixel contiguous, as the prior's kernel lays them out)."""
    whole, part = _aligned_blocks(full, blocks)
    summed = whole + part if torch.is_grad_enabled() else whole.add_(part)
    n, k, h, w = full.shape
    return summed.reshape(n, h, w, k).permute(0, 3, 1, 2)


class Head(nn.Module):
    """Crop the central target region of a channels-last latent and decode it to bin logits.

    The crop (the latent less ``margin`` latent pixels on each side) is upsampled by
    ``factor`` (a power of 2) in stages of 2x (1x1 conv + pixel shuffle + 3x3 conv), halving
    the channels each stage down to at least ``min_channels``, then a 1x1 conv gives
    ``num_bins`` logits per output pixel. With ``cond_dim`` set, the cropped latent is FiLM-
    modulated by the lead-time embedding. With ``lead_channels``, per-lead input planes at
    output resolution (e.g. the extrapolated field) join the upsampled features through a
    3x3 conv before the logits, so the head can place rain to the pixel where the latent
    only knows it to a latent pixel.

    With ``subpixel``, nothing runs at output resolution: the upsampling stops at half of
    it, the per-lead planes join there packed 2 x 2 into channels (space-to-depth), and the
    1x1 conv gives the logits of each 2 x 2 block of output pixels, unpacked as a pixel
    shuffle would (a sub-pixel convolution, made channels-last, which lays each pixel's
    logits out contiguously). Every output pixel keeps its own weights, at a fraction of the
    full-resolution head's cost (``BENCHMARKS.md``).

    With a ``prior`` (:class:`~metnet.models.prior.ExtrapolationPrior`), the logits are the
    prior's, computed from the per-lead inputs, plus the head's own as a correction, and
    the head's last conv also gives the prior's mixture logits (its ``mix_planes``, none for
    a pinned prior without the error ensemble); that conv starts at zero, so an untrained
    head forecasts the prior.

    Args:
        dim: latent channels C.
        num_bins: number K of rain-rate bins.
        margin: ``(rows, cols)`` latent pixels of context on each side of the target.
        factor: upsampling factor (latent pixel -> input pixels), a power of 2.
        cond_dim: lead-time embedding size, or None.
        min_channels: narrowest upsampling stage.
        lead_channels: per-lead input channels Cl joined at output resolution (0: none).
        prior: the probabilistic extrapolation to correct (needs ``lead_channels``).
        subpixel: work at half the output resolution, with a sub-pixel convolution last
            (needs ``factor`` >= 2).
    """

    def __init__(
        self,
        dim: int,
        num_bins: int,
        margin: tuple[int, int],
        factor: int,
        cond_dim: int | None = None,
        min_channels: int = 16,
        lead_channels: int = 0,
        prior: ExtrapolationPrior | None = None,
        subpixel: bool = False,
    ) -> None:
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"upsampling factor must be a power of 2, got {factor}")
        if subpixel and factor < 2:
            raise ValueError("a sub-pixel head needs an upsampling factor of at least 2")
        if prior is not None and lead_channels < 2:
            raise ValueError("the extrapolation prior needs per-lead inputs (lead_channels)")
        self.context_margin = tuple(margin)
        self.norm = nn.LayerNorm(dim)
        self.film = FiLM(cond_dim, dim) if cond_dim else None
        self.pack = 2 if subpixel else 1
        stages, c = [], dim
        for _ in range((factor // self.pack).bit_length() - 1):
            stages.append(_upsample_stage(c, max(c // 2, min_channels)))
            c = max(c // 2, min_channels)
        self.upsample = nn.Sequential(*stages)
        packed = lead_channels * self.pack**2
        self.fuse = (nn.Sequential(nn.Conv2d(c + packed, c, 3, padding=1), nn.GELU())
                     if lead_channels else None)
        self.prior = prior
        self.num_bins = num_bins
        outputs = num_bins + (prior.mix_planes if prior is not None else 0)
        self.logits = nn.Conv2d(c, outputs * self.pack**2, 1)
        if prior is not None:
            nn.init.zeros_(self.logits.weight)
            nn.init.zeros_(self.logits.bias)

    def _fuse(self, features: Tensor, planes: Tensor) -> Tensor:
        """The fuse convolution of features (N, c, H / p, W / p) joined with per-lead planes
        (N, Cl, H, W) packed p x p (p = :attr:`pack`), as the sum of its two parts: the
        same result (up to rounding) without the joined copy (oneDNN is slow on odd channel
        counts: a third of the time on a CPU), the planes' part convolving them unpacked
        (:func:`~metnet.models.downsampler.packed_conv`)."""
        conv, c = self.fuse[0], features.shape[1]
        out = F.conv2d(features, conv.weight[:, :c], conv.bias, conv.stride, conv.padding,
                       conv.dilation)
        return self.fuse[1](out.add_(packed_conv(conv.weight[:, c:], None, planes, self.pack)))

    @property
    def margin(self) -> int:
        """Pixels of per-lead inputs the head needs around the target on each side."""
        return self.prior.margin if self.prior is not None else 0

    def forward(self, z: Tensor, cond: Tensor | None = None, lead_inputs: Tensor | None = None,
                lead_minutes: Tensor | None = None, histograms: Tensor | None = None,
                probabilities: bool = False, out: Tensor | None = None) -> Tensor:
        """Logits (N, K, ht * factor, wt * factor), (ht, wt) the latent less its margins, or
        with ``probabilities`` their softmax over the bins; without gradients, the bins last
        in memory (a permuted (N, Ht, Wt, K) tensor).

        Args:
            z: (N, h, w, C) latent.
            cond: (N, cond_dim) lead-time embedding, or None.
            lead_inputs: (N, Cl, Ht + 2 margin, Wt + 2 margin) per-lead inputs around the
                target (Ht = ht * factor), or None.
            lead_minutes: (N,) lead times, with a prior.
            histograms: (N, C, K, Ht, Wt) the prior's histograms when already computed
                (:meth:`~metnet.models.prior.ExtrapolationPrior.histograms`), or None.
            probabilities: give the probabilities (inference): where the prior runs its CPU
                kernel, the kernel corrects its mixture pixel by pixel, times the exponentials
                of the corrections and normalised, without a log or a pass of its own over
                the distribution.
            out: with ``probabilities``, a contiguous (N, Ht, Wt, K) float32 buffer that the
                prior's kernel writes them into where it can (the result then is a view of
                it); None: a new one.
        """
        (top, left), (h, w) = self.context_margin, z.shape[1:3]
        z = self.norm(z[:, top : h - top, left : w - left])
        z = modulate(z, self.film(cond)[0] if self.film is not None else None)
        features = self.upsample(z.permute(0, 3, 1, 2))
        if self.fuse is not None:
            m = self.margin
            inner = lead_inputs[..., m:lead_inputs.shape[-2] - m, m:lead_inputs.shape[-1] - m]
            features = self._fuse(features, inner.to(features.dtype))
        weight, bias, p = self.logits.weight.flatten(1), self.logits.bias, self.pack
        if self.prior is None:
            logits = _unblocked(_block_logits(weight, bias, features, p))
            return _softmax_of_bins(logits) if probabilities else logits
        k = self.num_bins * p**2  # the bins' outputs, then the prior's mixture logits
        mix = _subpixel_planes(weight[k:], bias[k:], features, p)
        corrections = _block_logits(weight[:k], bias[:k], features, p)
        if probabilities and histograms is None and self.prior.runs_kernel(mix, lead_inputs):
            probs = self.prior.mixture(mix, lead_inputs, lead_minutes, out,
                                       corrections.float().exp())
            if probs is not None:
                return probs
        if histograms is None:
            prior = self.prior.logits(mix, lead_inputs, lead_minutes)
        else:
            prior = self.prior(mix, histograms, lead_minutes)
        logits = _add_blocks(prior, corrections)
        return _softmax_of_bins(logits) if probabilities else logits
