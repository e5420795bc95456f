"""Probabilistic forecasts over a whole radar domain from a trained network.

The network sees a context patch of ``input_size`` pixels and predicts the
central ``target_size`` pixels. To cover a domain, target tiles are laid on a
lattice with a stride of half the target size (so they overlap), the domain is
padded with "no coverage" (rain 0, mask 0) around its edges so that the edge
pixels get a target tile too, and the tiles' **bin probabilities** are blended
with a smooth 2-D ``sin²`` (Hann) taper with a small floor. The ``sin²`` tapers
of tiles half a tile apart sum to one, so the blend is seamless; blending
probabilities (not summary statistics) keeps each pixel's distribution a
proper distribution, from which the mean, quantiles and exceedance
probabilities are then derived.

Conventions (the checkpoint does not record the data settings):

* the context is ``config["context_frames"]`` consecutive frames of the store's
  step grid (``step_minutes`` attribute) ending at the init time; the data settings
  saved in the checkpoint must agree (:func:`check_data_settings`: a model trained
  with another context spacing, or with satellite, static or time channels, is refused);
* lead times default to every store step up to ``config["max_lead_minutes"]``;
* the input channels are the plain radar ones ``[rain, rain_mask]``
  (:func:`metnet.data.dataset.channel_names`), so ``input_channels`` must be 2;
* a network with per-lead inputs (``lead_channels``, trained with motion inputs) gets
  them computed here on the whole domain (:func:`metnet.data.motion.lead_planes`: 2
  channels, or 4 with the motion field), from the last 3 frames, before tiling;
* a checkpoint's post-hoc calibration (:mod:`metnet.calibration`), when given, tempers
  the blended distribution: the logs of its bin probabilities are divided by the lead's
  temperature (:func:`temper`; what ``metnet evaluate`` scores as ``model_calibrated``);
* pixels where the last context frame is NaN (outside radar coverage) are NaN
  in every output.

The output dataset has dims ``(init_time, lead_time, y, x)`` (see
:func:`forecast_dataset`) and is written atomically by :func:`write_forecast`.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from metnet.data.motion import MOTION_FRAMES, lead_channel_names, lead_planes
from metnet.data.transforms import clean_rate, rate_to_input_
from metnet.distribution import RainRateDistribution
from metnet.io.store import VARIABLE

if TYPE_CHECKING:
    from metnet.calibration import Calibration

RADAR_CHANNELS = 2
WEIGHT_FLOOR = 1e-2
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
DEFAULT_THRESHOLDS = (0.1, 1.0, 4.0, 8.0)
TIME_UNITS = "minutes since 1970-01-01 00:00:00"


class ForecastError(ValueError):
    """A forecast that cannot be made: bad init time, lead time or checkpoint/store mismatch."""


# -- time axis ---------------------------------------------------------------------------


def store_step(store_ds: xr.Dataset) -> int:
    """The store's time step in minutes (its ``step_minutes`` attribute)."""
    return int(store_ds.attrs["step_minutes"])


def _iso(time: np.datetime64 | pd.Timestamp) -> str:
    return pd.Timestamp(time).strftime("%Y-%m-%dT%H:%M")


def utc_time(text: str | np.datetime64 | pd.Timestamp) -> np.datetime64:
    """An ISO time (naive = UTC, or with an offset) as naive UTC ``datetime64[ns]``."""
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return np.datetime64(stamp.as_unit("ns"))


def context_times(init_time: np.datetime64, frames: int, step_minutes: int) -> np.ndarray:
    """(frames,) datetime64[ns]: the context frame times, oldest first, ending at ``init_time``."""
    offsets = np.arange(1 - frames, 1) * np.timedelta64(step_minutes, "m")
    return (init_time + offsets).astype("datetime64[ns]")


def check_init_times(store_ds: xr.Dataset, init_times: Sequence, context_frames: int) -> list:
    """Init times as datetime64[ns], refusing any that is not in the store or lacks context.

    Raises:
        ForecastError: naming the init time and, for an incomplete context, the missing times.
    """
    step = store_step(store_ds)
    available = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    checked = []
    for text in init_times:
        init = utc_time(text)
        if init.astype("datetime64[ns]").tolist() not in available:
            first, last = store_ds["time"].values[[0, -1]]
            raise ForecastError(
                f"init time {_iso(init)} is not a time of the store (frames from {_iso(first)} "
                f"to {_iso(last)} every {step} min)"
            )
        wanted = context_times(init, context_frames, step)
        missing = [_iso(t) for t in wanted if t.tolist() not in available]
        if missing:
            raise ForecastError(
                f"init time {_iso(init)} lacks past frames {', '.join(missing)} (the model "
                f"needs {context_frames} frames every {step} min)"
            )
        checked.append(init)
    return checked


def complete_init_times(
    store_ds: xr.Dataset, start: str, end: str, context_frames: int,
    lead_times: Sequence[int] = (),
) -> list[np.datetime64]:
    """Store times in ``[start, end]`` with a complete context and, if given, every target.

    Args:
        start, end: ISO UTC bounds (inclusive).
        context_frames: frames of context on the store's step grid.
        lead_times: lead times in minutes whose observations must be in the store.
    """
    step = store_step(store_ds)
    times = store_ds["time"].values.astype("datetime64[ns]")
    available = set(times.tolist())
    leads = np.asarray(lead_times, dtype="timedelta64[m]")
    chosen = []
    for init in times[(times >= utc_time(start)) & (times <= utc_time(end))]:
        needed = np.concatenate([context_times(init, context_frames, step),
                                 (init + leads).astype("datetime64[ns]")])
        if all(t.tolist() in available for t in needed):
            chosen.append(init)
    return chosen


# -- checkpoint / store compatibility ----------------------------------------------------


def check_data_settings(settings: dict, store_ds: xr.Dataset) -> None:
    """Refuse a store whose time grid differs from the one the model was trained on.

    Args:
        settings: the data settings saved in the checkpoint (the datamodule's
            hyperparameters; empty for a checkpoint without them: nothing is checked).

    Raises:
        ForecastError: the context spacing or the extra input channels do not fit.
    """
    step = store_step(store_ds)
    context_step = settings.get("context_step_minutes") or settings.get("step_minutes")
    if context_step and int(context_step) != step:
        raise ForecastError(
            f"the model was trained on context frames {context_step} min apart; the store "
            f"steps every {step} min (forecast reads consecutive store frames)"
        )
    extras = [name for name in ("satellite_stores", "static_channels", "time_channels")
              if settings.get(name)]
    if extras:
        raise ForecastError(f"the model was trained with {', '.join(extras)}; forecast "
                            "supports radar-only models")


def frames_needed(net: nn.Module) -> int:
    """Past frames a forecast reads: the context, and 3 for the motion of per-lead inputs."""
    frames = int(net.config["context_frames"])
    return max(frames, MOTION_FRAMES) if net.config.get("lead_channels", 0) else frames


def motion_velocity(net: nn.Module) -> bool:
    """Whether the net's per-lead inputs include the motion field (4 channels, not 2)."""
    channels = int(net.config.get("lead_channels", 0))
    known = {len(lead_channel_names(v)): v for v in (False, True)}
    if channels and channels not in known:
        raise ForecastError(f"the checkpoint takes {channels} per-lead input channels; "
                            f"forecast knows {sorted(known)} (extrapolation, + motion)")
    return known.get(channels, False)


def resolve_lead_times(net: nn.Module, store_ds: xr.Dataset,
                       lead_times: Sequence[int] | None = None) -> list[int]:
    """Lead times in minutes: the given ones, checked, or every store step up to the net's
    longest lead (every ``lead_step_minutes`` for a one-hot conditioned net).

    Raises:
        ForecastError: the net and the store do not fit (channels, time step), or a lead
            time is not a positive multiple of the step or beyond the net's longest lead.
    """
    config, step = net.config, store_step(store_ds)
    if config["input_channels"] != RADAR_CHANNELS:
        raise ForecastError(
            f"the checkpoint expects {config['input_channels']} input channels per frame; "
            f"forecast supports the radar channels [rain, rain_mask] only ({RADAR_CHANNELS})"
        )
    lead_step, longest = int(config["lead_step_minutes"]), int(config["max_lead_minutes"])
    if lead_step % step:
        raise ForecastError(
            f"the checkpoint's lead-time step ({lead_step} min) is not a multiple of the "
            f"store's {step}-minute step: the model was trained on another time grid"
        )
    grid = lead_step if config.get("conditioning") == "onehot" else step
    leads = list(range(grid, longest + 1, grid)) if lead_times is None else list(lead_times)
    bad = [t for t in leads if t <= 0 or t % grid or t > longest]
    if not leads or bad:
        raise ForecastError(
            f"lead times must be positive multiples of {grid} min up to the checkpoint's "
            f"longest lead {longest} min; got {bad or leads}"
        )
    return [int(t) for t in leads]


# -- tiling ------------------------------------------------------------------------------


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
    return Tiling(tuple(domain), input_size, target_size, tuple(stride))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


# -- inference ---------------------------------------------------------------------------


def read_context(store_ds: xr.Dataset, init_time: np.datetime64, frames: int) -> np.ndarray:
    """Cleaned rain rate (frames, H, W) float32 mm/h (NaN: not observed) ending at init."""
    times = context_times(init_time, frames, store_step(store_ds))
    rate = store_ds[VARIABLE].sel(time=times).values.astype(np.float32)
    return clean_rate(rate)


def padded_input(rate: np.ndarray, tiling: Tiling) -> torch.Tensor:
    """Model input (T, 2, Hp, Wp) of context rates (T, H, W): [rain, rain_mask], padded with
    no coverage (0, 0) to ``tiling.padded``."""
    values = torch.from_numpy(np.array(rate, dtype=np.float32))
    planes = torch.stack([torch.zeros_like(values), (~torch.isnan(values)).float()], dim=1)
    planes[:, 0] = rate_to_input_(values)
    return pad_planes(planes, tiling)


def pad_planes(planes: np.ndarray | torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """Input planes (N, C, H, W) padded with zeros (no coverage) to (N, C, *tiling.padded)."""
    planes = torch.as_tensor(planes)
    (top, left), (height, width) = tiling.margin, planes.shape[-2:]
    out = torch.zeros((*planes.shape[:2], *tiling.padded))
    out[..., top:top + height, left:left + width] = planes
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
) -> torch.Tensor:
    """Bin probabilities (L, K, H, W) over the domain, blended from overlapping tiles.

    Args:
        net: a MetNet (eval mode) taking (B, T, 2, S, S) inputs.
        rate: (T, H, W) context rain rate in mm/h, NaN where not observed.
        lead_times: L lead times in minutes.
        tiling: the tiling of the (H, W) domain.
        batch_tiles: tiles per network call; the encoder runs once per tile and all leads
            are decoded in one batched pass.
        per_lead: (L, Cl, H, W) per-lead inputs over the domain, for a net that takes them.

    Returns:
        float32 probabilities, summing to 1 over K at every pixel covered in the last frame
        (other pixels: whatever the blend gave; mask them).
    """
    device = next(net.parameters()).device
    x = padded_input(rate, tiling).to(device)
    planes = pad_planes(per_lead, tiling).to(device) if per_lead is not None else None
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
            probs = torch.softmax(net(*args).float(), dim=2)  # (B, L, K, Ht, Wt)
            for tile_probs, (r, c) in zip(probs, batch, strict=True):
                total[..., r:r + th, c:c + tw] += tile_probs * weight
                weight_sum[r:r + th, c:c + tw] += weight
            bar.update(len(batch))
    bar.close()
    height, width = rate.shape[1:]
    blended = total / weight_sum.clamp_min(WEIGHT_FLOOR**2)
    return blended[..., :height, :width].cpu()


# -- the forecast dataset ----------------------------------------------------------------


def temper(probs: torch.Tensor, lead_times: Sequence[int],
           calibration: Calibration) -> torch.Tensor:
    """Bin probabilities (L, K, H, W) with each lead's temperature applied: the softmax of
    their logs divided by it (T > 1 broadens, T < 1 sharpens)."""
    logits = torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))
    return torch.softmax(calibration.scale_logits(logits, lead_times, dim=1), dim=1)


def _distribution(probs: torch.Tensor, edges: Sequence[float]) -> RainRateDistribution:
    """The rain-rate distribution of probabilities (L, K, H, W)."""
    logits = torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))
    return RainRateDistribution(logits, edges, dim=1)


def decision_cuts(calibration: Calibration | None, lead_times: Sequence[int],
                  thresholds: Sequence[float]) -> np.ndarray:
    """(N, L) probability cuts of the rain/no-rain decisions: the calibration's cut where it
    has one for the lead and threshold, else 0.5."""
    def cut(lead: int, threshold: float) -> float:
        if calibration is None or not any(np.isclose(threshold, calibration.thresholds)):
            return 0.5
        return calibration.decision_threshold(lead, threshold)

    return np.array([[cut(m, t) for m in lead_times] for t in thresholds], dtype=np.float32)


def _summaries(
    probs: torch.Tensor, edges: Sequence[float], coverage: np.ndarray,
    quantiles: Sequence[float], thresholds: Sequence[float], bin_probabilities: bool,
    cuts: np.ndarray,
) -> dict[str, np.ndarray]:
    """Mean (L, H, W), quantiles (Q, L, H, W), exceedance and decisions (N, L, H, W) (rain
    where the exceedance reaches the (N, L) ``cuts``) and optionally the probabilities
    (K, L, H, W); NaN where ``coverage`` (H, W) is False."""
    dist = _distribution(probs, edges)
    exceedance = torch.stack([dist.exceedance(t) for t in thresholds])
    out = {
        "precip_rate_mean": dist.mean(),
        "precip_rate_quantile": torch.stack([dist.quantile(q) for q in quantiles]),
        "probability_of_exceedance": exceedance,
        "rain_forecast": (exceedance >= torch.from_numpy(cuts)[..., None, None]).float(),
    }
    if bin_probabilities:
        out["bin_probability"] = probs.movedim(1, 0)
    outside = torch.from_numpy(~coverage)
    return {name: value.masked_fill(outside, torch.nan).numpy().astype(np.float32)
            for name, value in out.items()}


def forecast_dataset(
    net: nn.Module,
    store_ds: xr.Dataset,
    init_times: Sequence,
    lead_times: Sequence[int] | None = None,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    bin_probabilities: bool = False,
    batch_tiles: int = 8,
    stride: tuple[int, int] | None = None,
    calibration: Calibration | None = None,
    calibrated_decisions: bool = True,
    progress: bool = False,
) -> xr.Dataset:
    """Forecast the whole domain of a store at each init time.

    Args:
        net: a film- or onehot-conditioned MetNet in eval mode with 2 input channels.
        store_ds: an opened store (:func:`metnet.io.store.open_store`).
        init_times: ISO strings or datetimes (UTC), each a store time with a full context.
        lead_times: minutes (default: every store step up to the net's longest lead).
        quantiles: levels in [0, 1] of ``precip_rate_quantile``.
        thresholds: rates (mm/h) of ``probability_of_exceedance`` (P(R > t)).
        bin_probabilities: also return ``bin_probability`` (bin, init_time, lead_time, y, x).
        batch_tiles: tiles per network call.
        stride: tile stride (rows, cols) in pixels; default half the target size.
        calibration: the checkpoint's calibration (temperature per lead, decision cuts), or
            None (raw probabilities, decisions at 0.5).
        calibrated_decisions: decide with the calibration's cuts (False: at 0.5).
        progress: show progress bars over init times and tiles.

    Returns:
        A CF dataset with dims (init_time, lead_time, y, x): ``precip_rate_mean`` (mm/h),
        ``precip_rate_quantile`` (quantile, ...), ``probability_of_exceedance`` (threshold,
        ...), ``rain_forecast`` (threshold, ...: 1 where the exceedance probability reaches
        ``decision_probability`` (threshold, lead_time), else 0), optionally
        ``bin_probability`` (bin, ...) with ``bin_edges`` (bin_edge); NaN outside the
        coverage of each init time's last context frame.

    Raises:
        ForecastError: an init time or lead time that does not fit, or a net that does not
            fit the store.
    """
    leads = resolve_lead_times(net, store_ds, lead_times)
    frames, context = frames_needed(net), int(net.config["context_frames"])
    velocity = motion_velocity(net)
    inits = check_init_times(store_ds, init_times, frames)
    tiling = make_tiling(net, (store_ds.sizes["y"], store_ds.sizes["x"]), stride)
    steps = [lead / store_step(store_ds) for lead in leads]
    cuts = decision_cuts(calibration if calibrated_decisions else None, leads, thresholds)
    fields: list[dict[str, np.ndarray]] = []
    for init in tqdm(inits, desc="init times", unit="init", disable=not progress):
        rate = read_context(store_ds, init, frames)
        per_lead = lead_planes(rate, steps, velocity) if net.config.get("lead_channels") else None
        probs = blended_probabilities(net, rate[-context:], leads, tiling, batch_tiles,
                                      progress, per_lead)
        if calibration is not None:
            probs = temper(probs, leads, calibration)
        fields.append(_summaries(probs, net.bin_edges, ~np.isnan(rate[-1]), quantiles,
                                 thresholds, bin_probabilities, cuts))
    stacked = {name: np.stack([f[name] for f in fields], axis=-4) for name in fields[0]}
    ds = _as_dataset(stacked, store_ds, inits, leads, quantiles, thresholds, net.bin_edges)
    ds["decision_probability"] = (("threshold", "lead_time"), cuts, {
        "units": "1", "long_name": "probability cut of rain_forecast: rain where "
        "probability_of_exceedance >= this (calibrated on validation, or 0.5)"})
    return ds


def _as_dataset(
    fields: dict[str, np.ndarray], store_ds: xr.Dataset, inits: list, leads: list[int],
    quantiles: Sequence[float], thresholds: Sequence[float], edges: Sequence[float],
) -> xr.Dataset:
    base = ("init_time", "lead_time", "y", "x")
    dims = {"precip_rate_mean": base, "precip_rate_quantile": ("quantile", *base),
            "probability_of_exceedance": ("threshold", *base),
            "rain_forecast": ("threshold", *base), "bin_probability": ("bin", *base)}
    init_index = np.array(inits, dtype="datetime64[ns]")
    valid = init_index[:, None] + np.array(leads, dtype="timedelta64[m]")[None, :]
    coords = {
        "init_time": ("init_time", init_index, {"standard_name": "forecast_reference_time",
                                                "long_name": "time of the last context frame"}),
        "lead_time": ("lead_time", np.array(leads, dtype=np.int32),
                      {"units": "minute", "long_name": "forecast lead time",
                       "standard_name": "forecast_period"}),
        "valid_time": (("init_time", "lead_time"), valid.astype("datetime64[ns]"),
                       {"standard_name": "time", "long_name": "time the forecast is valid for"}),
        "y": store_ds["y"].variable.copy(deep=True).load(),
        "x": store_ds["x"].variable.copy(deep=True).load(),
        "quantile": ("quantile", np.asarray(quantiles, dtype=np.float64),
                     {"units": "1", "long_name": "probability level of the quantile"}),
        "threshold": ("threshold", np.asarray(thresholds, dtype=np.float64),
                      {"units": "mm/h", "long_name": "rain-rate threshold"}),
    }
    if "bin_probability" in fields:
        coords["bin_edges"] = ("bin_edge", np.asarray(edges, dtype=np.float64),
                               {"units": "mm/h", "long_name": "rain-rate bin edges; bin k "
                                "holds rates from bin_edges[k] to bin_edges[k+1]"})
    ds = xr.Dataset({name: (dims[name], value) for name, value in fields.items()}, coords=coords)
    for name, attrs in _variable_attrs().items():
        if name in ds:
            ds[name].attrs = {**attrs, "grid_mapping": "crs"}
    ds["crs"] = xr.DataArray(np.int32(0), attrs={
        "crs_wkt": store_ds.attrs.get("crs_wkt", ""), "spatial_ref": store_ds.attrs.get(
            "crs_wkt", ""), "proj4": str(store_ds.attrs["crs"])})
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "metnet probabilistic precipitation nowcast",
        "source": f"metnet forecast from the {store_ds.attrs.get('source', '')} store",
        "crs": str(store_ds.attrs["crs"]),
        "crs_wkt": str(store_ds.attrs.get("crs_wkt", "")),
        "pixel_size_x": float(store_ds.attrs["pixel_size_x"]),
        "pixel_size_y": float(store_ds.attrs["pixel_size_y"]),
        "step_minutes": store_step(store_ds),
        "probability_blending": "bin probabilities of overlapping tiles, sin^2 taper",
    }
    return ds


def _variable_attrs() -> dict[str, dict[str, str]]:
    return {
        "precip_rate_mean": {"units": "mm/h", "standard_name": "rainfall_rate",
                             "long_name": "expected surface precipitation rate",
                             "cell_methods": "realization: mean"},
        "precip_rate_quantile": {"units": "mm/h", "standard_name": "rainfall_rate",
                                 "long_name": "quantile of surface precipitation rate"},
        "probability_of_exceedance": {
            "units": "1", "long_name": "probability that the precipitation rate exceeds "
            "the threshold"},
        "rain_forecast": {"units": "1", "flag_values": "0 1",
                          "flag_meanings": "no_rain_above_threshold rain_above_threshold",
                          "long_name": "deterministic forecast of rain above the threshold"},
        "bin_probability": {"units": "1",
                            "long_name": "probability of each rain-rate bin (see bin_edges)"},
    }


# -- writing -----------------------------------------------------------------------------


def write_forecast(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a forecast dataset as netCDF-4 (``.nc``) or zarr v3 (``.zarr``), atomically:
    it is written to a hidden sibling path and renamed into place when complete.

    Raises:
        FileExistsError: ``path`` exists. ValueError: another suffix.
    """
    path = Path(path)
    if path.suffix not in (".nc", ".zarr"):
        raise ValueError(f"{path}: the output must end in .nc (netCDF-4) or .zarr (zarr v3)")
    if path.exists():
        raise FileExistsError(f"{path}: already exists; remove it or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    encoding = _encoding(ds, zlib=path.suffix == ".nc")
    try:
        if path.suffix == ".nc":
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        else:
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)
        tmp.rename(path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    return path


def _encoding(ds: xr.Dataset, zlib: bool) -> dict:
    time = {"units": TIME_UNITS, "dtype": "int64"}
    out: dict[str, dict] = {"init_time": time, "valid_time": dict(time)}
    for name, var in ds.data_vars.items():
        if var.ndim >= 4:
            out[name] = {"zlib": True, "complevel": 4} if zlib else {}
    return out
