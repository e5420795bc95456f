"""The network's input, built from stores by one piece of code for training and forecasts.

:meth:`ContextSources.fill` writes the context channels (named by :func:`channel_names`) of
given frames over a pixel range of one radar store: a training sample's patch
(:class:`metnet.data.dataset.NowcastDataset`) or, through :class:`StoreContext`, the whole
domain of a forecast (:mod:`metnet.forecast`). The sources themselves (the satellite stores
aligned to the radar grid, the lat/lon planes) are set up by :class:`SourceSettings` from
the data settings, for training (:class:`metnet.data.datamodule.NowcastDataModule`) as for
forecasts, so both see the same channels.

Channels per frame, in order:

1. ``rain``: :func:`metnet.transforms.rate_to_input` of the rain rate, 0 where not observed
2. ``rain_mask``: 1 where the radar observed, 0 elsewhere
3. per satellite store k: ``sat{k}`` (same transform, on the radar grid) and ``sat{k}_mask``
4. with static channels: ``lat`` / 90 and ``lon`` / 180 (degrees, pixel centres)
5. with time channels: ``sin_tod``, ``cos_tod``, ``sin_doy``, ``cos_doy`` of the frame's
   time of day and day of year (constant planes)

Channels 1-3 are observations (0 beyond what was observed); 4-5 are known everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from metnet.data.alignment import Interpolation, SatelliteAlignment, lonlat
from metnet.data.frames import LAZY_CACHE_MB, Cache, StoreFrames
from metnet.times import context_times, iso
from metnet.transforms import rate_to_input_

NS_PER_DAY = 86_400 * 10**9
DAYS_PER_YEAR = 365.2425


def channel_names(n_satellites: int = 0, static: bool = False, time: bool = False) -> list[str]:
    """The context channels in order (see the module docstring)."""
    names = ["rain", "rain_mask"]
    for k in range(n_satellites):
        names += [f"sat{k}", f"sat{k}_mask"]
    if static:
        names += ["lat", "lon"]
    if time:
        names += ["sin_tod", "cos_tod", "sin_doy", "cos_doy"]
    return names


@dataclass
class ContextSources:
    """One radar store's frames and the sources of the other context channels, on its grid.

    Attributes:
        frames: the radar store's frames.
        satellites: satellite stores aligned to its grid, two channels each.
        lonlat: longitude and latitude (H, W) float32 in degrees of the pixel centres, for
            the static channels; None without them.
        time_channels: add the time-of-day and day-of-year channels.
    """

    frames: StoreFrames
    satellites: list[SatelliteAlignment] = field(default_factory=list)
    lonlat: tuple[np.ndarray, np.ndarray] | None = None
    time_channels: bool = False

    @property
    def channel_names(self) -> list[str]:
        """The channels :meth:`fill` writes, in order."""
        return channel_names(len(self.satellites), self.lonlat is not None, self.time_channels)

    @property
    def observed_channels(self) -> int:
        """How many leading channels are observations (radar, satellites; the others are
        known everywhere)."""
        return 2 * (1 + len(self.satellites))

    def fill(self, out: np.ndarray, frames: np.ndarray, rows: slice, cols: slice) -> None:
        """Write the model input of radar frames ``frames`` over pixels ``rows`` x ``cols``.

        Args:
            out: (n, C, h, w) float32, C = len(:attr:`channel_names`).
            frames: (n,) indices into ``self.frames.times``, oldest first.
            rows, cols: the pixel ranges (plain slices, step 1).
        """
        self.frames.read_input(frames, rows, cols, out)
        channel = 2
        for satellite in self.satellites:
            rate = torch.from_numpy(satellite.sample(frames, rows, cols))
            out[:, channel + 1] = ~torch.isnan(rate).numpy()
            out[:, channel] = rate_to_input_(rate).numpy()
            channel += 2
        if self.lonlat is not None:
            lon, lat = self.lonlat
            out[:, channel] = lat[rows, cols] / 90.0
            out[:, channel + 1] = lon[rows, cols] / 180.0
            channel += 2
        if self.time_channels:
            features = time_features(self.frames.times[frames])
            out[:, channel:channel + 4] = features[..., None, None]


@dataclass(frozen=True)
class SourceSettings:
    """The data settings that decide how stores are read and what the context channels are
    built from, shared by training samples and forecasts (see
    :class:`metnet.data.datamodule.NowcastDataModule` for each).

    Plain Python, no Lightning: a forecast builds its input without the datamodule.
    """

    satellite_tolerance_minutes: int = 15
    satellite_interpolation: Interpolation = "nearest"
    static_channels: bool = False
    time_channels: bool = False
    max_rate: float = 200.0
    cache: Cache = "memory"
    lazy_cache_mb: float = LAZY_CACHE_MB

    @classmethod
    def of(cls, settings: Mapping[str, Any], **overrides: Any) -> SourceSettings:
        """The source settings among data ``settings`` (a datamodule's hyperparameters, a
        checkpoint's data settings; the others ignored), then ``overrides``."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in settings.items() if k in names}, **overrides})

    def open_frames(self, path: str, keep: np.ndarray | None = None,
                    storage_options: dict[str, Any] | None = None) -> StoreFrames:
        """The frames ``keep`` (None: all) of a store."""
        return StoreFrames(path, keep, cache=self.cache, max_rate=self.max_rate,
                           storage_options=storage_options, lazy_cache_mb=self.lazy_cache_mb)

    def context_sources(self, frames: StoreFrames,
                        satellites: list[StoreFrames]) -> ContextSources:
        """What the context channels of a radar store's ``frames`` are built from:
        ``satellites`` aligned to its grid, its lat/lon with ``static_channels``, and
        ``time_channels``."""
        aligned = [SatelliteAlignment(frames, sat, self.satellite_tolerance_minutes,
                                      self.satellite_interpolation) for sat in satellites]
        coords = lonlat(frames.x, frames.y, frames.crs) if self.static_channels else None
        return ContextSources(frames, aligned, coords, self.time_channels)


@dataclass(frozen=True)
class ModelInput:
    """A network's input over a whole domain.

    Attributes:
        planes: (T, C, H, W) float32, channels as :attr:`ContextSources.channel_names`.
        observed_channels: how many leading channels are observations: beyond the domain
            they are "not observed" (0); the others (lat/lon, time) continue their edge values.
    """

    planes: np.ndarray
    observed_channels: int


@dataclass
class StoreContext:
    """A network's context over the whole domain of a radar store, at any of its times.

    Attributes:
        sources: what the channels come from (:meth:`ContextSources.fill`).
        step_minutes: minutes between context frames (a multiple of the store's step: the
            context takes every k-th store frame).
        context_frames: T, the frames the network reads.
        past_frames: N >= T, the frames of rain rate read (3 for the motion of per-lead
            inputs, if more than T).
    """

    sources: ContextSources
    step_minutes: int
    context_frames: int
    past_frames: int

    def read(self, init_time: np.datetime64) -> tuple[np.ndarray, ModelInput]:
        """The rain rate (N, H, W) float32 in mm/h (NaN: not observed) of the N past frames
        ``step_minutes`` apart ending at ``init_time``, oldest first, and the model input
        of the last T of them.

        Raises:
            ValueError: naming the context times that are not frames of the store.
        """
        frames = self._frames(init_time)
        whole = slice(None)
        rate = self.sources.frames.read(frames, whole, whole)
        planes = np.empty((self.context_frames, len(self.sources.channel_names),
                           *rate.shape[1:]), dtype=np.float32)
        self.sources.fill(planes, frames[-self.context_frames:], whole, whole)
        return rate, ModelInput(planes, self.sources.observed_channels)

    def _frames(self, init_time: np.datetime64) -> np.ndarray:
        """(N,) indices into the store's times of the context of ``init_time``."""
        times = context_times(init_time, self.past_frames, self.step_minutes)
        available = self.sources.frames.times
        index = np.clip(np.searchsorted(available, times), 0, len(available) - 1)
        missing = available[index] != times
        if missing.any():
            raise ValueError(f"{self.sources.frames.path}: no frames at "
                             f"{', '.join(iso(t) for t in times[missing])}")
        return index


def time_features(times: np.ndarray) -> np.ndarray:
    """(n, 4) float32 sin/cos of time of day and of day of year for datetime64[ns] ``times``."""
    ns = times.astype("datetime64[ns]").astype(np.int64)
    day_fraction = (ns % NS_PER_DAY) / NS_PER_DAY
    year_start = times.astype("datetime64[Y]").astype("datetime64[ns]").astype(np.int64)
    year_fraction = (ns - year_start) / NS_PER_DAY / DAYS_PER_YEAR
    angles = 2 * np.pi * np.stack([day_fraction, year_fraction], axis=1)
    return np.stack(
        [np.sin(angles[:, 0]), np.cos(angles[:, 0]), np.sin(angles[:, 1]), np.cos(angles[:, 1])],
        axis=1,
    ).astype(np.float32)
