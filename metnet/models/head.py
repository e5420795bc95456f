"""Output head: crop the target region of the latent, upsample, predict bin logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metnet.distribution import rain_to_bin
from metnet.models.conditioning import FiLM, modulate
from metnet.transforms import input_to_rate


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


class Head(nn.Module):
    """Crop the central target region of a channels-last latent and decode it to bin logits.

    The crop (``crop`` latent pixels) is upsampled by ``factor`` (a power of 2) in stages
    of 2x (1x1 conv + pixel shuffle + 3x3 conv), halving the channels each stage down to at least
    ``min_channels``, then a 1x1 conv gives ``num_bins`` logits per output pixel. With
    ``cond_dim`` set, the cropped latent is FiLM-modulated by the lead-time embedding. With
    ``lead_channels``, per-lead input planes at output resolution (e.g. the extrapolated
    field) join the upsampled features through a 3x3 conv before the logits, so the head can
    place rain to the pixel where the latent only knows it to a latent pixel.

    Args:
        dim: latent channels C.
        num_bins: number K of rain-rate bins.
        crop: ``(ht, wt)`` size of the central crop, latent pixels.
        factor: upsampling factor (latent pixel -> input pixels), a power of 2.
        cond_dim: lead-time embedding size, or None.
        min_channels: narrowest upsampling stage.
        lead_channels: per-lead input channels Cl joined at output resolution (0: none).
        skip_edges: with lead inputs, the K+1 bin edges (mm/h): the bin of the extrapolated
            rate (lead-input channel 0, masked by channel 1) is added to the logits through
            a learned K x K map that starts at zero, so the head can put the forecast where
            extrapolation puts it without learning the bin lookup (None: no skip).
    """

    def __init__(
        self,
        dim: int,
        num_bins: int,
        crop: tuple[int, int],
        factor: int,
        cond_dim: int | None = None,
        min_channels: int = 16,
        lead_channels: int = 0,
        skip_edges: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"upsampling factor must be a power of 2, got {factor}")
        self.crop = crop
        self.norm = nn.LayerNorm(dim)
        self.film = FiLM(cond_dim, dim) if cond_dim else None
        stages, c = [], dim
        for _ in range(factor.bit_length() - 1):
            stages.append(_upsample_stage(c, max(c // 2, min_channels)))
            c = max(c // 2, min_channels)
        self.upsample = nn.Sequential(*stages)
        self.fuse = (nn.Sequential(nn.Conv2d(c + lead_channels, c, 3, padding=1), nn.GELU())
                     if lead_channels else None)
        self.logits = nn.Conv2d(c, num_bins, 1)
        self.skip = None
        if skip_edges is not None:
            if not lead_channels:
                raise ValueError("the extrapolation skip needs lead inputs")
            self.register_buffer("skip_edges", torch.tensor(list(skip_edges)), persistent=False)
            self.skip = nn.Conv2d(num_bins, num_bins, 1)
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    def forward(self, z: Tensor, cond: Tensor | None = None,
                lead_inputs: Tensor | None = None) -> Tensor:
        """(N, h, w, C) latent, optional (N, cond_dim) and (N, Cl, ht * factor, wt * factor)
        per-lead inputs -> (N, K, ht * factor, wt * factor) logits."""
        (ht, wt), (h, w) = self.crop, z.shape[1:3]
        top, left = (h - ht) // 2, (w - wt) // 2
        z = self.norm(z[:, top : top + ht, left : left + wt])
        z = modulate(z, self.film(cond)[0] if self.film is not None else None)
        features = self.upsample(z.permute(0, 3, 1, 2))
        if self.fuse is not None:
            features = self.fuse(torch.cat([features, lead_inputs.to(features.dtype)], dim=1))
        logits = self.logits(features)
        if self.skip is not None:
            logits = logits + self.skip(self._extrapolated_bins(lead_inputs).to(logits.dtype))
        return logits

    def _extrapolated_bins(self, lead_inputs: Tensor) -> Tensor:
        """One-hot (N, K, h, w) of the bin of the extrapolated rate; 0 where unknown."""
        rate = input_to_rate(lead_inputs[:, 0].float())
        bins = F.one_hot(rain_to_bin(rate, self.skip_edges), self.skip.in_channels)
        return (bins * (lead_inputs[:, 1:2].movedim(1, -1) > 0.5)).movedim(-1, 1)
