"""Probabilistic forecasts over a whole radar domain from a trained network.

For each init time, the ``model`` nowcast method (:mod:`metnet.nowcasts.model`: the
network tiled over the domain, its bin probabilities blended) gives a rain-rate
distribution per pixel and lead time, from which the forecast file's fields follow
(:mod:`metnet.io.forecast_file`).

Conventions:

* the context is the network's ``context_frames`` consecutive frames of the store's step
  grid (``step_minutes`` attribute) ending at the init time, and 3 for the motion of a
  network trained with motion inputs; a checkpoint's data settings are checked against the
  store with :meth:`metnet.checkpoint.Checkpoint.check` (another context spacing, or
  satellite, static or time channels, are refused);
* lead times default to every store step up to the network's longest lead;
* a checkpoint's post-hoc calibration (:mod:`metnet.calibration`), when given, tempers
  the distribution and sets the cut of each lead's rain/no-rain decision;
* pixels where the last context frame is NaN (outside radar coverage) are NaN in every
  output; an init time whose last context frame is NaN everywhere (the radar saw nothing)
  is skipped with a warning naming it;
* init times are forecast once each, in time order, whatever order or repetition they are
  given in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from metnet.checkpoint import store_problems
from metnet.distribution import RainRateDistribution
from metnet.io.forecast_file import forecast_dataset_from_fields
from metnet.io.store import VARIABLE, StoreError
from metnet.nowcasts import get_method
from metnet.nowcasts.model import frames_needed
from metnet.times import context_times, iso, utc_time, valid_times
from metnet.transforms import clean_rate

if TYPE_CHECKING:
    from metnet.calibration import Calibration

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
DEFAULT_THRESHOLDS = (0.1, 1.0, 4.0, 8.0)


class ForecastError(ValueError):
    """A forecast that cannot be made: bad init time, lead time, option or checkpoint/store
    mismatch."""


def warn_user(message: str) -> None:
    """The default ``warn`` of :func:`iter_forecasts` and :func:`metnet.verification.evaluate`:
    a ``UserWarning`` (the command line prints one line instead)."""
    warnings.warn(message, UserWarning, stacklevel=3)


def check_settings(quantiles: Sequence[float] = DEFAULT_QUANTILES, batch_tiles: int = 1) -> None:
    """Refuse quantile levels outside (0, 1) (the 0 and 1 quantiles are the ends of the
    rain-rate bins, not forecasts) and fewer than one tile per network call.

    Raises:
        ForecastError: naming the values refused.
    """
    bad = [q for q in quantiles if not 0 < float(q) < 1]
    if bad:
        raise ForecastError(f"quantile levels must be between 0 and 1 (exclusive), e.g. "
                            f"[0.1,0.5,0.9]; got {', '.join(f'{q:g}' for q in bad)}")
    if int(batch_tiles) < 1:
        raise ForecastError(f"batch_tiles (tiles per network call) must be at least 1; got "
                            f"{batch_tiles}")


def has_radar_data(rate: np.ndarray) -> bool:
    """Whether the last frame of a context (T, H, W) mm/h saw anything (is not all NaN)."""
    return bool(np.isfinite(rate[-1]).any())


def no_radar_data(init: np.datetime64) -> str:
    """The warning of an init time skipped for a last context frame without radar data."""
    return (f"init time {iso(init)}: the last context frame has no radar data (NaN "
            "everywhere); skipped")


def store_step(store_ds: xr.Dataset) -> int:
    """The store's time step in minutes (its ``step_minutes`` attribute)."""
    return int(store_ds.attrs["step_minutes"])


def check_init_times(store_ds: xr.Dataset, init_times: Sequence, context_frames: int) -> list:
    """Init times as datetime64[ns], each once and in time order, refusing any that is not in
    the store or lacks context.

    Raises:
        ForecastError: naming the init time and, for an incomplete context, the missing times.
    """
    step = store_step(store_ds)
    available = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    checked = []
    for text in init_times:
        init = utc_time(text)
        if init.tolist() not in available:
            first, last = store_ds["time"].values[[0, -1]]
            raise ForecastError(
                f"init time {iso(init)} is not a time of the store (frames from {iso(first)} "
                f"to {iso(last)} every {step} min)"
            )
        wanted = context_times(init, context_frames, step)
        missing = [iso(t) for t in wanted if t.tolist() not in available]
        if missing:
            raise ForecastError(
                f"init time {iso(init)} lacks past frames {', '.join(missing)} (the model "
                f"needs {context_frames} frames every {step} min)"
            )
        checked.append(init)
    return sorted(set(checked))


def complete_init_times(
    store_ds: xr.Dataset, start: str, end: str, context_frames: int,
    lead_times: Sequence[int] = (),
) -> list[np.datetime64]:
    """Store times in ``[start, end]`` with a complete context and, if given, every target.

    Args:
        start, end: ISO bounds (inclusive; naive = UTC).
        context_frames: frames of context on the store's step grid.
        lead_times: lead times in minutes whose observations must be in the store.
    """
    step = store_step(store_ds)
    times = store_ds["time"].values.astype("datetime64[ns]")
    available = set(times.tolist())
    chosen = []
    for init in times[(times >= utc_time(start)) & (times <= utc_time(end))]:
        needed = np.concatenate([context_times(init, context_frames, step),
                                 valid_times(init, lead_times)])
        if all(t.tolist() in available for t in needed):
            chosen.append(init)
    return chosen


def resolve_lead_times(net: nn.Module, store_ds: xr.Dataset,
                       lead_times: Sequence[int] | None = None) -> list[int]:
    """Lead times in minutes: the given ones, checked, or every store step up to the net's
    longest lead (every ``lead_step_minutes`` for a one-hot conditioned net).

    Raises:
        ForecastError: the net and the store do not fit (channels, time step), or a lead
            time is not a positive multiple of the step or beyond the net's longest lead.
    """
    config, step = net.config, store_step(store_ds)
    if problems := store_problems(config, {}, store_ds):
        raise ForecastError("; ".join(problems))
    lead_step, longest = int(config["lead_step_minutes"]), int(config["max_lead_minutes"])
    grid = lead_step if config.get("conditioning") == "onehot" else step
    leads = list(range(grid, longest + 1, grid)) if lead_times is None else list(lead_times)
    bad = [t for t in leads if t <= 0 or t % grid or t > longest]
    if not leads or bad:
        raise ForecastError(
            f"lead times must be positive multiples of {grid} min up to the checkpoint's "
            f"longest lead {longest} min; got {bad or leads}"
        )
    return [int(t) for t in leads]


def read_rate(store_ds: xr.Dataset, times: Sequence) -> np.ndarray:
    """The stored rain rate (T, H, W) float32 at ``times``.

    Raises:
        StoreError: naming the store and the times, for a damaged chunk.
    """
    try:
        return store_ds[VARIABLE].sel(time=times).values.astype(np.float32)
    except Exception as err:  # codecs raise anything from ValueError to RuntimeError
        name = store_ds.encoding.get("source", "the store")
        when = ", ".join(np.datetime_as_string(np.asarray(times, "datetime64[m]")))
        raise StoreError(f"{name}: frames at {when} cannot be read ({err}); "
                         f"`metnet check {name}` names every damaged frame") from None


def read_context(store_ds: xr.Dataset, init_time: np.datetime64, frames: int) -> np.ndarray:
    """Cleaned rain rate (frames, H, W) float32 mm/h (NaN: not observed) ending at init."""
    times = context_times(init_time, frames, store_step(store_ds))
    rate = read_rate(store_ds, times)
    return clean_rate(rate)


def read_observations(store_ds: xr.Dataset, init_time: np.datetime64,
                      lead_times: Sequence[int]) -> np.ndarray:
    """Observed rain rate (L, H, W) mm/h at init + each lead (cleaned, NaN: not observed)."""
    times = valid_times(init_time, lead_times)
    return clean_rate(read_rate(store_ds, times))


def decision_cuts(calibration: Calibration | None, lead_times: Sequence[int],
                  thresholds: Sequence[float]) -> np.ndarray:
    """(N, L) probability cuts of the rain/no-rain decisions: the calibration's cut where it
    has one for the lead and threshold, else 0.5."""
    def cut(lead: int, threshold: float) -> float:
        if calibration is None or not any(np.isclose(threshold, calibration.thresholds)):
            return 0.5
        return calibration.decision_threshold(lead, threshold)

    return np.array([[cut(m, t) for m in lead_times] for t in thresholds], dtype=np.float32)


def summaries(
    dist: RainRateDistribution, coverage: np.ndarray, quantiles: Sequence[float],
    thresholds: Sequence[float], cuts: np.ndarray, bin_probabilities: bool = False,
) -> dict[str, np.ndarray]:
    """The forecast file's fields of one init time's distribution (batch shape (L, H, W)).

    Returns:
        Mean (L, H, W), quantiles (Q, L, H, W), exceedance and decisions (N, L, H, W) (rain
        where the exceedance reaches the (N, L) ``cuts``) and optionally the bin
        probabilities (K, L, H, W); NaN where ``coverage`` (H, W) is False.
    """
    exceedance = torch.stack([dist.exceedance(t) for t in thresholds])
    out = {
        "precip_rate_mean": dist.mean(),
        "precip_rate_quantile": torch.stack([dist.quantile(q) for q in quantiles]),
        "probability_of_exceedance": exceedance,
        "rain_forecast": (exceedance >= torch.from_numpy(cuts)[..., None, None]).float(),
    }
    if bin_probabilities:
        out["bin_probability"] = dist.probs.movedim(1, 0)
    outside = torch.from_numpy(~coverage)
    return {name: value.masked_fill(outside, torch.nan).numpy().astype(np.float32)
            for name, value in out.items()}


def forecast_dataset(
    net: nn.Module,
    store_ds: xr.Dataset,
    init_times: Sequence,
    lead_times: Sequence[int] | None = None,
    **options,
) -> xr.Dataset:
    """Forecast the whole domain of a store at each init time, in memory.

    Arguments as for :func:`iter_forecasts`.

    Returns:
        The CF dataset of :mod:`metnet.io.forecast_file` over all init times.
    """
    parts = list(iter_forecasts(net, store_ds, init_times, lead_times, **options))
    if not parts:
        raise ForecastError("no init time has radar data in its last context frame")
    fixed = [name for name, var in parts[0].data_vars.items() if "init_time" not in var.dims]
    return xr.concat([parts[0], *(part.drop_vars(fixed) for part in parts[1:])],
                     dim="init_time", data_vars="minimal", coords="minimal",
                     compat="override", join="exact")


def iter_forecasts(
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
    warn: Callable[[str], None] = warn_user,
) -> Iterator[xr.Dataset]:
    """Forecast the whole domain of a store at each init time, yielding one CF dataset per
    init time as it completes (so a long period runs in the memory of one).

    Args:
        net: a film- or onehot-conditioned MetNet in eval mode with 2 input channels.
        store_ds: an opened store (:func:`metnet.io.store.open_store`).
        init_times: ISO strings or datetimes (UTC), each a store time with a full context
            (forecast once each, in time order).
        lead_times: minutes (default: every store step up to the net's longest lead).
        quantiles: levels in (0, 1) of ``precip_rate_quantile``.
        thresholds: rates (mm/h) of ``probability_of_exceedance`` (P(R > t)).
        bin_probabilities: also return ``bin_probability`` (bin, init_time, lead_time, y, x).
        batch_tiles: tiles per network call (at least 1).
        stride: tile stride (rows, cols) in pixels; default half the target size.
        calibration: the checkpoint's calibration (temperature per lead, decision cuts), or
            None (raw probabilities, decisions at 0.5).
        calibrated_decisions: decide with the calibration's cuts (False: at 0.5).
        progress: show progress bars over init times and tiles.
        warn: called with a line naming each init time skipped because its last context
            frame has no radar data.

    Yields:
        The CF dataset of :mod:`metnet.io.forecast_file` of one init time; NaN outside the
        coverage of the init time's last context frame.

    Raises:
        ForecastError: an init time, lead time, quantile level or batch size that does not
            fit, or a net that does not fit the store (before any forecast is made).
    """
    check_settings(quantiles, batch_tiles)
    leads = resolve_lead_times(net, store_ds, lead_times)
    frames = frames_needed(net)
    inits = check_init_times(store_ds, init_times, frames)
    cuts = decision_cuts(calibration if calibrated_decisions else None, leads, thresholds)
    model = get_method("model")
    for init in tqdm(inits, desc="init times", unit="init", disable=not progress):
        rate = read_context(store_ds, init, frames)
        if not has_radar_data(rate):
            warn(no_radar_data(init))
            continue
        dist = model(rate, leads, step_minutes=store_step(store_ds), net=net,
                     calibration=calibration, batch_tiles=batch_tiles, stride=stride,
                     progress=progress)
        fields = summaries(dist, ~np.isnan(rate[-1]), quantiles, thresholds, cuts,
                           bin_probabilities)
        yield forecast_dataset_from_fields({name: np.expand_dims(value, -4)
                                            for name, value in fields.items()},
                                           store_ds, [init], leads, quantiles, thresholds,
                                           net.bin_edges, cuts)
