"""Probabilistic forecasts over a whole radar domain from a trained network.

For each init time, the ``model`` nowcast method (:mod:`metnet.nowcasts.model`: the
network tiled over the domain, its bin probabilities blended) gives a rain-rate
distribution per pixel and lead time, from which the forecast file's fields follow
(:mod:`metnet.io.forecast_file`).

Conventions:

* the network's input is built as its training samples were: :func:`store_context` sets up
  the sources of every channel the datamodule built (satellite stores aligned to the radar
  grid, lat/lon and time channels) through the code the datamodule sets them up with
  (:class:`metnet.data.inputs.SourceSettings`), from the checkpoint's data settings, and
  :class:`metnet.data.inputs.StoreContext` writes them over the whole domain with the code
  that writes a training sample; satellite stores are those the settings record unless
  others are given (``--satellite_stores``);
* the context is the network's ``context_frames`` frames ending at the init time, as far
  apart as in training (``context_step_minutes``): every k-th frame of a store whose step
  divides that spacing (another store is refused, as is a store of another pixel size:
  :meth:`metnet.checkpoint.Checkpoint.check`), and 3 for the motion of a network trained
  with motion inputs; a network given without its data settings reads the store's
  consecutive frames, radar channels only (:class:`RadarContext`);
* lead times default to every store step up to the network's longest lead;
* a checkpoint's post-hoc calibration (:mod:`metnet.calibration`), when given, tempers
  the distribution and sets the cut of each lead's rain/no-rain decision;
* pixels where the last context frame is NaN (outside radar coverage) are NaN in every
  output; an init time whose last context frame is NaN everywhere (the radar saw nothing)
  is skipped with a warning naming it;
* init times are forecast once each, in time order, whatever order or repetition they are
  given in;
* :func:`watch_forecasts` is the operational loop over a store that ``metnet ingest``
  extends: it polls the store's root metadata document (rewritten last by every append, so
  a change means whole new frames) and forecasts each init time that arrives, once its
  context is complete. Ingest appends only frames later than the store's last, so an init
  time's context is complete when it arrives or never.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from metnet.checkpoint import (
    channel_problem,
    context_step,
    lead_step_problem,
    settings_channel_names,
    spacing_problem,
)
from metnet.data.inputs import SourceSettings, StoreContext, channel_names
from metnet.distribution import RainRateDistribution
from metnet.io.forecast_file import forecast_dataset_from_fields
from metnet.io.store import (
    METADATA_DOCUMENTS,
    VARIABLE,
    StoreError,
    is_remote,
    local_path,
    open_store,
)
from metnet.nowcasts import get_method
from metnet.nowcasts.model import domain_coverage, frames_needed
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


def check_init_times(store_ds: xr.Dataset, init_times: Sequence, context_frames: int,
                     context_step_minutes: int | None = None) -> list:
    """Init times as datetime64[ns], each once and in time order, refusing any that is not in
    the store or lacks context (``context_frames`` frames ``context_step_minutes`` apart,
    default the store's step).

    Raises:
        ForecastError: naming the init time and, for an incomplete context, the missing times.
    """
    step = context_step_minutes or store_step(store_ds)
    available = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    checked = []
    for text in init_times:
        init = utc_time(text)
        if init.tolist() not in available:
            first, last = store_ds["time"].values[[0, -1]]
            raise ForecastError(
                f"init time {iso(init)} is not a time of the store (frames from {iso(first)} "
                f"to {iso(last)} every {store_step(store_ds)} min)"
            )
        if missing := missing_context(available, init, context_frames, step):
            raise ForecastError(
                f"init time {iso(init)} lacks past frames {', '.join(missing)} (the model "
                f"needs {context_frames} frames every {step} min)"
            )
        checked.append(init)
    return sorted(set(checked))


def missing_context(available: set[int], init: np.datetime64, frames: int,
                    step: int) -> list[str]:
    """The ISO times of ``init``'s context (``frames`` frames every ``step`` minutes) that
    are not among the ``available`` times (``datetime64[ns]`` values as ``tolist()`` gives
    them)."""
    return [iso(t) for t in context_times(init, frames, step) if t.tolist() not in available]


def complete_init_times(
    store_ds: xr.Dataset, start: str, end: str, context_frames: int,
    lead_times: Sequence[int] = (), context_step_minutes: int | None = None,
) -> list[np.datetime64]:
    """Store times in ``[start, end]`` with a complete context and, if given, every target.

    Args:
        start, end: ISO bounds (inclusive; naive = UTC).
        context_frames: frames of context.
        lead_times: lead times in minutes whose observations must be in the store.
        context_step_minutes: minutes between context frames (default: the store's step).
    """
    step = context_step_minutes or store_step(store_ds)
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
        ForecastError: the net's lead-time step does not fit the store's time step, or a
            lead time is not a positive multiple of the step or beyond the net's longest lead.
    """
    config, step = net.config, store_step(store_ds)
    if problem := lead_step_problem(config, step):
        raise ForecastError(problem)
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


@dataclass(frozen=True)
class RadarContext:
    """The context of a network given without its data settings: ``past_frames``
    consecutive frames of an opened store, the network's radar channels built by the nowcast
    method (:func:`metnet.nowcasts.model.radar_input`)."""

    store_ds: xr.Dataset
    past_frames: int

    @property
    def step_minutes(self) -> int:
        """Minutes between context frames: the store's step."""
        return store_step(self.store_ds)

    def read(self, init_time: np.datetime64) -> tuple[np.ndarray, None]:
        """The rain rate (N, H, W) mm/h of the frames ending at ``init_time``, and no model
        input (the nowcast method builds it)."""
        return read_context(self.store_ds, init_time, self.past_frames), None


#: Where a forecast's context comes from (both read ``(rate, inputs)`` per init time).
Context = StoreContext | RadarContext


def default_context(store_ds: xr.Dataset, net: nn.Module,
                    storage_options: dict[str, Any] | None = None) -> Context:
    """The context of ``net`` on an opened store when none is given.

    A network that carries the data settings it was trained with (one of
    :attr:`metnet.checkpoint.Checkpoint.net`) and needs more than consecutive radar frames
    (satellite stores, lat/lon or time channels, contexts further apart than the store's
    step) gets :func:`store_context` of them, reading the store ``store_ds`` was opened
    from. Any other gets a :class:`RadarContext` of ``store_ds`` itself (which may be cropped
    or held in memory).

    Raises:
        ForecastError: a net without data settings that takes other channels than the
            radar's two; a dataset not opened from a store (by
            :func:`metnet.io.store.open_store`) or cropped, for a net that needs more;
            those of :func:`store_context`.
    """
    settings = getattr(net, "data_settings", None) or {}
    step = store_step(store_ds)
    if (settings_channel_names(settings) == channel_names()
            and context_step(settings, step) == step):
        if problem := channel_problem(net.config, channel_names()):
            raise ForecastError(f"{problem}; give the checkpoint's data settings")
        return RadarContext(store_ds, frames_needed(net))
    context = (store_context(store_ds, net, settings, storage_options=storage_options)
               if store_ds.encoding.get("source") else None)
    if context is None or context.sources.frames.shape != (store_ds.sizes["y"],
                                                           store_ds.sizes["x"]):
        raise ForecastError(
            "the model's input (satellite, lat/lon or time channels, or spaced contexts) is "
            "read from its store: give a dataset opened whole by metnet.io.store.open_store, "
            "or context=store_context(...)")
    return context


def store_context(
    store_ds: xr.Dataset, net: nn.Module, settings: Mapping[str, Any],
    satellite_stores: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StoreContext:
    """The context of ``net``, trained with data ``settings``, over an opened store's whole
    domain: the channels of its training samples, set up as the datamodule set them up.

    Args:
        store_ds: the radar store (:func:`metnet.io.store.open_store`).
        net: the network (its context frames, input channels, per-lead inputs).
        settings: the data settings it was trained with
            (:attr:`metnet.checkpoint.Checkpoint.data_settings`; empty: radar channels,
            consecutive store frames).
        satellite_stores: the satellite stores, in training order, instead of those the
            settings record (None: those).
        storage_options: fsspec options of URL stores.

    Raises:
        ForecastError: a context spacing the store's step does not divide, channels that do
            not fit the net, or a satellite store missing or of another count.
    """
    step = store_step(store_ds)
    problems = [spacing_problem(settings, step),
                channel_problem(net.config, settings_channel_names(settings))]
    if found := [problem for problem in problems if problem]:
        raise ForecastError("; ".join(found))
    sources = SourceSettings.of(settings, cache="lazy")
    satellites = [sources.open_frames(path, storage_options=storage_options)
                  for path in _satellite_stores(settings, satellite_stores)]
    frames = sources.open_frames(store_ds.encoding["source"], storage_options=storage_options)
    return StoreContext(sources.context_sources(frames, satellites),
                        context_step(settings, step),
                        int(net.config["context_frames"]), frames_needed(net))


def _satellite_stores(settings: Mapping[str, Any], given: Sequence[str] | None) -> list[str]:
    """The satellite stores of a forecast: ``given``, else those the data settings record.

    Raises:
        ForecastError: a local store that does not exist, or a count other than the
            settings'.
    """
    recorded = [str(path) for path in settings.get("satellite_stores") or []]
    stores = recorded if given is None else [str(path) for path in given]
    if len(stores) != len(recorded):
        raise ForecastError(f"the model was trained with {len(recorded)} satellite store(s) "
                            f"({', '.join(recorded) or 'none'}); --satellite_stores gives "
                            f"{len(stores)}")
    for path in stores:
        if not is_remote(path) and not local_path(path).exists():
            raise ForecastError(f"{path}: no such satellite store (the model was trained "
                                f"with satellite stores {', '.join(recorded)}; give their "
                                "paths, in that order, with --satellite_stores, or from "
                                "Python as satellite_stores of store_context)")
    return stores


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
    context: Context | None = None,
    progress: bool = False,
    warn: Callable[[str], None] = warn_user,
) -> Iterator[xr.Dataset]:
    """Forecast the whole domain of a store at each init time, yielding one CF dataset per
    init time as it completes (so a long period runs in the memory of one).

    Args:
        net: a film- or onehot-conditioned MetNet in eval mode.
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
        context: the network's input over the store (:func:`store_context`, which builds
            every channel of its training samples); None: :func:`default_context`.
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
    context = context or default_context(store_ds, net)
    inits = check_init_times(store_ds, init_times, context.past_frames, context.step_minutes)
    cuts = decision_cuts(calibration if calibrated_decisions else None, leads, thresholds)
    model = get_method("model")
    for init in tqdm(inits, desc="init times", unit="init", disable=not progress):
        rate, inputs = context.read(init)
        if not has_radar_data(rate):
            warn(no_radar_data(init))
            continue
        dist = model(rate, leads, step_minutes=context.step_minutes, net=net, inputs=inputs,
                     calibration=calibration, batch_tiles=batch_tiles, stride=stride,
                     progress=progress)
        fields = summaries(dist, ~np.isnan(rate[-1]), quantiles, thresholds, cuts,
                           bin_probabilities)
        yield forecast_dataset_from_fields({name: np.expand_dims(value, -4)
                                            for name, value in fields.items()},
                                           store_ds, [init], leads, quantiles, thresholds,
                                           net.bin_edges, cuts, domain_coverage(net))


@dataclass(frozen=True)
class WatchedForecast:
    """A forecast made by :func:`watch_forecasts`, with when its init time's frame came.

    Attributes:
        forecast: the CF dataset of one init time (as :func:`iter_forecasts` yields it).
        store: the store as opened when the frame was seen (for plots).
        seen: when the watch first saw the frame (``time.time()``); for frames already in
            the store, when the watch began.
        written: when the store was written with the frame, as its file system tells (the
            metadata document's modification time; ``time.time()`` scale), or None where it
            does not tell (HTTP) and for frames already in the store when the watch began.
        at_start: the frame was in the store when the watch began.
    """

    forecast: xr.Dataset
    store: xr.Dataset
    seen: float
    written: float | None
    at_start: bool


class MetadataPoll:
    """Whether a store changed, from its root metadata document (one small read): the
    consolidated metadata that every append of :func:`metnet.io.store.append_frames`
    rewrites last."""

    def __init__(self, store: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = fsspec.core.url_to_fs(store, **(storage_options or {}))
        for name in METADATA_DOCUMENTS:
            self.document = f"{root.rstrip('/')}/{name}"
            if self.fs.exists(self.document):
                break
        else:
            raise StoreError(f"{store}: no {' or '.join(METADATA_DOCUMENTS)} to watch (a "
                             "watched store needs consolidated metadata)")
        self.content: bytes | None = None

    def changed(self) -> bool:
        """Whether the document differs from the one read at the previous call (True at
        the first)."""
        content = self.fs.cat_file(self.document)
        changed, self.content = content != self.content, content
        return changed

    def modified(self) -> float | None:
        """The document's modification time (seconds since the epoch), or None where the
        file system does not tell."""
        try:
            return self.fs.modified(self.document).timestamp()
        except (NotImplementedError, OSError, KeyError, ValueError):
            return None


def watch_forecasts(
    net: nn.Module,
    store: str,
    lead_times: Sequence[int],
    *,
    storage_options: dict[str, Any] | None = None,
    after: np.datetime64 | None = None,
    start: str | None = None,
    poll_seconds: float = 10.0,
    timeout: float | None = None,
    make_context: Callable[[xr.Dataset], Context] | None = None,
    warn: Callable[[str], None] = warn_user,
    **options: Any,
) -> Iterator[WatchedForecast]:
    """Forecast each init time of a store that ``metnet ingest`` extends as soon as its
    frame arrives with a complete context; runs until ``timeout`` or until the consumer
    stops.

    Every ``poll_seconds`` the store's root metadata document is read; when it changed, the
    store is reopened and its new times are forecast (each in time order). An init time whose
    context lacks frames is skipped with a warning naming them (ingest never fills a gap
    before its last frame). A poll that fails (a network error, an HTTP 5xx, a store caught
    mid-rewrite) is warned about and tried again at the next.

    Args:
        net: the network, as for :func:`iter_forecasts`.
        store: a local path or fsspec URL of a store with consolidated metadata.
        lead_times: minutes, resolved (:func:`resolve_lead_times`).
        storage_options: fsspec options of a URL store.
        after: forecast only later init times (the last one an output holds).
        start: forecast the store's init times from this ISO time on; without ``start`` or
            ``after``, the store's last time when the watch begins, then every later one.
        poll_seconds: seconds between polls.
        timeout: stop after this many seconds of watching: a forecast in progress ends
            first, none is begun after (a backlog is left for the next watch); None: never.
        make_context: the network's context over the store as (re)opened (e.g.
            :func:`store_context` with the checkpoint's data settings); None:
            :func:`default_context`.
        warn: called with a line per init time skipped and per failed poll.
        options: keyword arguments of :func:`iter_forecasts` (quantiles, calibration, ...).

    Yields:
        Each forecast with when its frame arrived.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    make_context = make_context or (lambda ds: default_context(ds, net, storage_options))
    poll = MetadataPoll(store, storage_options)
    poll.changed()  # before opening: a change from here on is seen at the next poll
    seen, written, at_start = time.time(), None, True
    store_ds = open_store(store, storage_options)
    times = store_ds["time"].values.astype("datetime64[ns]")
    first = utc_time(start) if start else (times[-1] if after is None else None)
    newest = None
    while True:
        times = store_ds["time"].values.astype("datetime64[ns]")
        new = times if newest is None else times[times > newest]
        newest = times[-1]
        context, available, ready = make_context(store_ds), set(times.tolist()), []
        for init in new:
            if (after is not None and init <= after) or (first is not None and init < first):
                continue
            if missing := missing_context(available, init, context.past_frames,
                                          context.step_minutes):
                warn(f"init time {iso(init)}: its context lacks frames {', '.join(missing)}; "
                     "skipped")
            else:
                ready.append(init)
        if ready and expired():
            return
        for forecast in iter_forecasts(net, store_ds, ready, lead_times, context=context,
                                       warn=warn, **options):
            yield WatchedForecast(forecast, store_ds, seen, written, at_start)
            if expired():  # checked before the next forecast is begun
                return
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            time.sleep(poll_seconds if left is None else min(poll_seconds, left))
            try:
                if poll.changed():
                    seen, written, at_start = time.time(), poll.modified(), False
                    store_ds = open_store(store, storage_options)
                    break
            except Exception as err:  # each file system raises its own (aiohttp: HTTP 5xx)
                poll.content = None  # reopen at the next poll that succeeds
                reason = " ".join((str(err) if isinstance(err, StoreError)
                                   else f"{type(err).__name__}: {err}").split())
                warn(f"{store}: polling failed ({reason}); trying again in {poll_seconds:g} s")


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise ``KeyboardInterrupt``: a write
    in the block is never cut halfway. Outside the main thread (where Python handles no
    signals) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
