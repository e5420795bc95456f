"""The trained network as a nowcast method: a rain-rate distribution over a whole domain.

A network that takes inputs of any size (``position: none``, :attr:`MetNet.any_size`)
forecasts the whole domain in **one pass**: the domain, padded by the context margin of no
coverage, goes through the encoder once, and every lead is decoded from that one latent
(in chunks of leads that bound the memory of the full-resolution head). Its cost grows
with the domain's area, and there are no tile seams.

Any other network is **tiled**: it sees a context patch of ``input_size`` pixels and
predicts the central ``target_size`` pixels. To cover a domain, target tiles are laid on a
lattice with a stride of half the target size (so they overlap), the domain is padded with
"no coverage" (rain 0, mask 0) around its edges so that the edge pixels get a target tile
too, and the tiles' **bin probabilities** are blended with a smooth 2-D ``sin²`` (Hann)
taper with a small floor. The ``sin²`` tapers of tiles half a tile apart sum to one, so the
blend is seamless; blending probabilities (not summary statistics) keeps each pixel's
distribution a proper distribution, from which the mean, quantiles and exceedance
probabilities follow.

The network's input is ``inputs``, its training samples' channels over the whole domain
(:class:`metnet.data.inputs.StoreContext` builds them, satellites, lat/lon and time
channels included), or, without it, the radar channels [rain, rain_mask] of ``rate``.
Beyond the domain, the observation channels are padded as "not observed" (0) and the others
(lat/lon, time) continue their edge values. A network with per-lead inputs (``lead_channels``,
trained with motion inputs) gets them computed here on the whole domain
(:func:`metnet.data.motion.lead_planes`): before tiling, or, in one pass, while the encoder
runs in another thread (:func:`encode_while`).
A checkpoint's post-hoc calibration (:mod:`metnet.calibration`) tempers the distribution:
the one pass's logits (the blend's: the logs of its bin probabilities) are divided by the
lead's temperature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from metnet.data.inputs import ModelInput
from metnet.data.motion import lead_planes
from metnet.distribution import RainRateDistribution
from metnet.models.lead_inputs import lead_layout
from metnet.nowcasts.extrapolation import MOTION_FRAMES
from metnet.transforms import rate_to_input_

if TYPE_CHECKING:
    from metnet.calibration import Calibration

Result = TypeVar("Result")

WEIGHT_FLOOR = 1e-2
#: Leads x pixels decoded per network call in a one-pass forecast: the head's
#: full-resolution activations (about 60 float32 values per lead and pixel) stay near 0.5 GB.
DECODE_PIXELS = 2**21


@dataclass(frozen=True)
class Tiling:
    """Overlapping target tiles over an (H, W) domain, in pixels.

    Target tile (i, j) covers domain rows ``[i * stride_y, i * stride_y + Ht)`` and
    columns likewise; its context covers the same rows extended by the margin
    ``(S - St) // 2`` on each side, read from the domain padded by ``pad_top`` /
    ``pad_left`` (and enough rows/columns below and right) of no coverage.
    """

    domain: tuple[int, int]
    input_size: tuple[int, int]
    target_size: tuple[int, int]
    stride: tuple[int, int]

    @property
    def counts(self) -> tuple[int, int]:
        """Tiles along y and x."""
        return tuple(
            1 + math.ceil(max(n - t, 0) / s)
            for n, t, s in zip(self.domain, self.target_size, self.stride, strict=True)
        )

    @property
    def margin(self) -> tuple[int, int]:
        """Context pixels on each side of a target tile (= padding before the domain)."""
        return tuple((s - t) // 2 for s, t in zip(self.input_size, self.target_size, strict=True))

    @property
    def covered(self) -> tuple[int, int]:
        """Extent of the union of target tiles (>= the domain)."""
        return tuple((c - 1) * s + t for c, s, t in
                     zip(self.counts, self.stride, self.target_size, strict=True))

    @property
    def padded(self) -> tuple[int, int]:
        """Shape of the padded context domain."""
        return tuple(c + 2 * m for c, m in zip(self.covered, self.margin, strict=True))

    def corners(self) -> list[tuple[int, int]]:
        """Top-left (row, col) of every target tile in domain pixels (= of its context in
        padded pixels)."""
        (ny, nx), (sy, sx) = self.counts, self.stride
        return [(i * sy, j * sx) for i in range(ny) for j in range(nx)]

    def weights(self) -> torch.Tensor:
        """(Ht, Wt) blending weights: outer product of ``sin²`` tapers, floored."""
        tapers = [torch.sin(math.pi * (torch.arange(t) + 0.5) / t) ** 2 for t in self.target_size]
        return torch.outer(*tapers).clamp_min(WEIGHT_FLOOR)


def make_tiling(net: nn.Module, domain: tuple[int, int],
                stride: tuple[int, int] | None = None) -> Tiling:
    """The tiling of ``domain`` (H, W) for ``net``; default stride: half the target size."""
    config = net.config
    input_size = _pair(config["input_size"])
    target_size = _pair(config["target_size"])
    stride = stride or tuple(max(t // 2, 1) for t in target_size)
    if min(stride) < 1:
        raise ValueError(f"the tile stride must be >= 1 pixel, got {stride}")
    return Tiling(tuple(domain), input_size, target_size, tuple(stride))


def domain_coverage(net: nn.Module) -> str:
    """How ``net`` covers a domain, in words (for a forecast file's metadata)."""
    if getattr(net, "any_size", False):
        return "one pass of the network over the whole domain"
    return "overlapping tiles, their bin probabilities blended with a sin^2 taper"


def one_pass_tiling(net: nn.Module, domain: tuple[int, int]) -> Tiling:
    """A single "tile" for a network of any input size: the domain rounded up to whole
    latent pixels, and the context margin of its training patches around it."""
    factor = net.downsampler.factor
    covered = tuple(math.ceil(n / factor) * factor for n in domain)
    margin = tuple(m * factor for m in net.latent_margin)
    padded = tuple(c + 2 * m for c, m in zip(covered, margin, strict=True))
    return Tiling(tuple(domain), padded, covered, covered)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def frames_needed(net: nn.Module) -> int:
    """Past frames a forecast reads: the context, and 3 for the motion of per-lead inputs."""
    frames = int(net.config["context_frames"])
    return max(frames, MOTION_FRAMES) if net.config.get("lead_channels", 0) else frames


def motion_layout(net: nn.Module) -> tuple[bool, bool]:
    """``(velocity, error)``: whether the net's per-lead inputs include the motion field and
    the last step's extrapolation error (:func:`metnet.models.lead_inputs.lead_layout`).

    Raises:
        ValueError: a number of per-lead channels this version does not build.
    """
    channels = int(net.config.get("lead_channels", 0))
    return lead_layout(channels) if channels else (False, False)


def radar_input(rate: np.ndarray) -> ModelInput:
    """The radar channels [rain, rain_mask] (T, 2, H, W) of context rates (T, H, W) mm/h."""
    values = torch.from_numpy(np.array(rate, dtype=np.float32))
    planes = torch.stack([torch.zeros_like(values), (~torch.isnan(values)).float()], dim=1)
    planes[:, 0] = rate_to_input_(values)
    return ModelInput(planes.numpy(), observed_channels=2)


def padded_input(rate: np.ndarray, tiling: Tiling,
                 inputs: ModelInput | None = None) -> torch.Tensor:
    """Model input (T, C, Hp, Wp) padded to ``tiling.padded``: ``inputs``, or
    :func:`radar_input` of the context rates ``rate`` (T, H, W) when None."""
    inputs = radar_input(rate) if inputs is None else inputs
    return pad_planes(inputs.planes, tiling, inputs.observed_channels)


def pad_planes(planes: np.ndarray | torch.Tensor, tiling: Tiling,
               observed_channels: int | None = None) -> torch.Tensor:
    """Input planes (N, C, H, W) padded to (N, C, *tiling.padded): the first
    ``observed_channels`` (None: all) with zeros (no coverage), the others with their edge
    values."""
    planes = torch.as_tensor(planes)
    (top, left), (height, width) = tiling.margin, planes.shape[-2:]
    out = torch.zeros((*planes.shape[:2], *tiling.padded))
    out[..., top:top + height, left:left + width] = planes
    if observed_channels is not None and observed_channels < planes.shape[1]:
        bottom, right = (p - m - n for p, m, n in zip(tiling.padded, (top, left),
                                                      (height, width), strict=True))
        out[:, observed_channels:] = F.pad(planes[:, observed_channels:],
                                           (left, right, top, bottom), mode="replicate")
    return out


def _active_corners(tiling: Tiling, coverage: np.ndarray) -> list[tuple[int, int]]:
    """Corners of the target tiles holding at least one covered pixel."""
    th, tw = tiling.target_size
    return [(r, c) for r, c in tiling.corners() if coverage[r:r + th, c:c + tw].any()]


def _batches(items: list, size: int) -> Iterator[list]:
    for first in range(0, len(items), size):
        yield items[first:first + size]


def blended_probabilities(
    net: nn.Module, rate: np.ndarray, lead_times: Sequence[int], tiling: Tiling,
    batch_tiles: int = 8, progress: bool = False, per_lead: np.ndarray | None = None,
    inputs: ModelInput | None = None,
) -> torch.Tensor:
    """Bin probabilities (L, K, H, W) over the domain, blended from overlapping tiles.

    Args:
        net: a MetNet (eval mode) taking (B, T, C, S, S) inputs.
        rate: (T, H, W) context rain rate in mm/h, NaN where not observed.
        lead_times: L lead times in minutes.
        tiling: the tiling of the (H, W) domain.
        batch_tiles: tiles per network call; the encoder runs once per tile and all leads
            are decoded in one batched pass.
        per_lead: (L, Cl, H, W) per-lead inputs over the domain, for a net that takes them.
        inputs: the network's input (default: :func:`radar_input` of ``rate``).

    Returns:
        float32 probabilities, summing to 1 over K at every pixel covered in the last frame
        (other pixels: whatever the blend gave; mask them).
    """
    if batch_tiles < 1:
        raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")
    device = next(net.parameters()).device
    x = padded_input(rate, tiling, inputs).to(device)
    planes = pad_planes(per_lead, tiling).to(device) if per_lead is not None else None
    histograms = prior_histograms(net, planes, lead_times, tiling)
    (th, tw), (sh, sw) = tiling.target_size, tiling.input_size
    weight = tiling.weights().to(device)
    num_bins = len(net.bin_edges) - 1
    total = torch.zeros((len(lead_times), num_bins, *tiling.covered), device=device)
    weight_sum = torch.zeros(tiling.covered, device=device)
    corners = _active_corners(tiling, ~np.isnan(rate[-1]))
    leads = torch.tensor(lead_times, device=device)
    bar = tqdm(total=len(corners), desc="tiles", unit="tile", leave=False, disable=not progress)
    with torch.inference_mode():
        for batch in _batches(corners, batch_tiles):
            inputs = torch.stack([x[:, :, r:r + sh, c:c + sw] for r, c in batch])
            extra = (torch.stack([planes[..., r:r + sh, c:c + sw] for r, c in batch])
                     if planes is not None else None)
            args = (inputs, leads) if extra is None else (inputs, leads, extra)
            if histograms is not None:
                args += (torch.stack([histograms[..., r:r + th, c:c + tw] for r, c in batch]),)
            probs = torch.softmax(net(*args).float(), dim=2)  # (B, L, K, Ht, Wt)
            for tile_probs, (r, c) in zip(probs, batch, strict=True):
                total[..., r:r + th, c:c + tw] += tile_probs * weight
                weight_sum[r:r + th, c:c + tw] += weight
            bar.update(len(batch))
    bar.close()
    height, width = rate.shape[1:]
    blended = total / weight_sum.clamp_min(WEIGHT_FLOOR**2)
    return blended[..., :height, :width].cpu()


def whole_domain_probabilities(
    net: nn.Module, rate: np.ndarray, lead_times: Sequence[int], progress: bool = False,
    per_lead: np.ndarray | Callable[[], np.ndarray] | None = None,
    inputs: ModelInput | None = None, calibration: Calibration | None = None,
) -> torch.Tensor:
    """Bin probabilities (L, K, H, W) over the domain from one pass of an :attr:`any_size`
    network: one encoding of the padded domain, then the leads decoded in chunks, each
    chunk's logits (tempered by ``calibration``) turned into probabilities as they come, so
    that the whole forecast's logits are never kept (on a 1024 px domain they would be
    another 1.2 GB).

    Args:
        net: a MetNet (eval mode) with ``any_size``.
        rate: (T, H, W) context rain rate in mm/h, NaN where not observed.
        lead_times: L lead times in minutes.
        progress: show a progress bar over the chunks of leads.
        per_lead: (L, Cl, H, W) per-lead inputs over the domain, for a net that takes them,
            or the function that computes them, called while the encoder runs
            (:func:`encode_while`).
        inputs: the network's input (default: :func:`radar_input` of ``rate``).
        calibration: a checkpoint's calibration, or None.

    Returns:
        float32 probabilities on the CPU, laid out with the bins last in memory, as
        :class:`~metnet.distribution.RainRateDistribution` reads them: a view of the domain
        in a buffer of whole latent pixels, the decoder's (no copy of a 382 x 350 px
        domain's probabilities to crop them).
    """
    tiling = one_pass_tiling(net, rate.shape[1:])
    device = next(net.parameters()).device
    x = padded_input(rate, tiling, inputs).to(device)[None]
    work = per_lead if callable(per_lead) else (lambda given=per_lead: given)
    latent, unpadded = encode_while(net, x, work)
    planes = pad_planes(unpadded, tiling).to(device) if unpadded is not None else None
    del unpadded  # planes computed here (252 MB on 1024 px) are freed once padded
    height, width = rate.shape[1:]
    chunk = max(1, DECODE_PIXELS // math.prod(tiling.covered))
    firsts = range(0, len(lead_times), chunk)
    # the whole latent's pixels, the decoder's: no copy to crop the domain; one chunk's
    # probabilities are the buffer itself
    out = (None if len(firsts) == 1 else
           torch.empty((len(lead_times), *tiling.covered, len(net.bin_edges) - 1)))
    with torch.inference_mode():
        for first in tqdm(firsts, desc="leads", unit="chunk", leave=False, disable=not progress):
            part = slice(first, first + chunk)
            leads = list(lead_times[part])
            extra = planes[part][None] if planes is not None else None
            # the head makes the prior's histograms itself: on a CPU it never keeps them;
            # it writes the probabilities into the forecast's buffer where it can
            buffer = out[part] if out is not None and device.type == "cpu" else None
            decoded = net.decode(latent, torch.tensor(leads, device=device), extra,
                                 probabilities=calibration is None,
                                 out=None if buffer is None else buffer[None])[0].float()
            probs = decoded.permute(0, 2, 3, 1)  # the head lays the bins last
            if calibration is not None:
                tempered = calibration.scale_logits(decoded, leads, dim=1).permute(0, 2, 3, 1)
                probs = (torch.softmax(tempered, dim=-1) if buffer is None
                         else torch.softmax(tempered, dim=-1, out=buffer))
            probs = probs.contiguous().cpu()
            if out is None:
                out = probs
            elif probs.data_ptr() != out[part].data_ptr():
                out[part] = probs
    return out[:, :height, :width].permute(0, 3, 1, 2)


def encode_while(net: nn.Module, x: torch.Tensor,
                 work: Callable[[], Result]) -> tuple[torch.Tensor, Result]:
    """``(net.encode(x), work())``, the encoder in a worker thread while ``work`` runs in this
    one. The forecast's motion and advection (``work``) keep about one CPU core busy and the
    encoder does not need them, so the two share the cores (on 2 cores whole forecasts took
    5-15 % less time than with the two in turn; BENCHMARKS.md). The worker keeps torch's
    threads: one thread fewer was slower than no worker at all.

    Args:
        net: a MetNet (eval mode) with ``any_size``.
        x: (1, T, C, Hp, Wp) padded input on the net's device.
        work: what else the forecast needs before decoding.
    """

    def encode() -> torch.Tensor:
        with torch.inference_mode():  # a thread's own mode
            return net.encode(x)

    with ThreadPoolExecutor(max_workers=1) as pool:
        latent = pool.submit(encode)
        done = work()
        return latent.result(), done


def prior_histograms(net: nn.Module, planes: torch.Tensor | None, lead_times: Sequence[int],
                     tiling: Tiling) -> torch.Tensor | None:
    """The histograms (L, C, K, *tiling.covered) of a network's extrapolation prior
    (:class:`~metnet.models.prior.ExtrapolationPrior`) over the whole covered domain, from
    its padded per-lead planes (L, Cl, *tiling.padded): computed once, not once per tile.
    None for a network without a prior."""
    prior = getattr(getattr(net, "head", None), "prior", None)
    if prior is None or planes is None:
        return None
    return prior.histograms(prior_region(prior, planes, tiling),
                            torch.tensor(lead_times, device=planes.device))


def prior_region(prior: nn.Module, planes: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """The part (L, Cl, covered + 2 margin) of padded per-lead planes (L, Cl,
    *tiling.padded) that a prior (:class:`~metnet.models.prior.ExtrapolationPrior`) reads:
    the covered domain and the prior's margin around it."""
    (top, left), (height, width), r = tiling.margin, tiling.covered, prior.margin
    return planes[..., top - r:top + height + r, left - r:left + width + r]


def forecast(rate: np.ndarray, lead_times: Sequence[int], *, step_minutes: float,
             net: nn.Module, inputs: ModelInput | None = None,
             calibration: Calibration | None = None, batch_tiles: int = 8,
             stride: tuple[int, int] | None = None, progress: bool = False,
             **_: object) -> RainRateDistribution:
    """The network's rain-rate distribution over the whole domain of context rates.

    Args:
        rate: (T, H, W) context rain rate in mm/h, oldest first, ``step_minutes`` apart,
            NaN where not observed; at least :func:`frames_needed` frames (the network
            reads its last ``context_frames``).
        lead_times: L lead times in minutes, each one the network was trained for.
        step_minutes: time between context frames (the network's context spacing).
        net: a MetNet in eval mode.
        inputs: the network's input over the domain, of the last ``context_frames`` frames
            of ``rate`` (:meth:`metnet.data.inputs.StoreContext.read`); None: the radar
            channels [rain, rain_mask] of ``rate``, for a radar-only network.
        calibration: a checkpoint's calibration: each lead's temperature tempers the
            blended distribution (None: raw).
        batch_tiles: tiles per network call (tiled networks only).
        stride: tile stride (rows, cols) in pixels; default half the target size (tiled
            networks only).
        progress: show a progress bar over tiles (or chunks of leads).

    Returns:
        The distribution with batch shape (L, H, W) (bins along dim 1 of its logits);
        pixels not covered in the last frame hold meaningless values: mask them.
    """
    frames = frames_needed(net)
    if rate.shape[0] < frames:
        raise ValueError(f"the network needs {frames} past frames, got {rate.shape[0]}")
    def per_lead() -> np.ndarray | None:
        if not net.config.get("lead_channels"):
            return None
        return lead_planes(rate[-MOTION_FRAMES:], [m / step_minutes for m in lead_times],
                           *motion_layout(net))

    context = rate[-int(net.config["context_frames"]):]
    if getattr(net, "any_size", False):
        probs = whole_domain_probabilities(net, context, lead_times, progress, per_lead, inputs,
                                           calibration)
    else:
        tiling = make_tiling(net, rate.shape[1:], stride)
        probs = blended_probabilities(net, context, lead_times, tiling, batch_tiles, progress,
                                      per_lead(), inputs)
        if calibration is not None:  # the blend's logits: the logs of its probabilities
            blend = RainRateDistribution.from_probs(probs, net.bin_edges, dim=1)
            logits = calibration.scale_logits(blend.logits, lead_times, dim=1)
            return RainRateDistribution(logits, net.bin_edges, dim=1)
    return RainRateDistribution.from_probs(probs, net.bin_edges, dim=1)
