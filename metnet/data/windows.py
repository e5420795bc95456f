"""Complete-window indexing and time-based splits, on plain arrays of times.

Vocabulary:

* the *step grid*: instants ``phase + k * step_minutes``; a store frame is on
  it or not; a time the grid has but the store lacks is a gap.
* a *window*: ``context_frames`` grid instants ``context_stride`` steps apart
  ending at the init time (the last context frame), plus one instant per lead
  time after it. It is
  *complete* when the store has every one of those frames.
* a window's *footprint*: the span from its first context frame to its last
  lead frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metnet.times import utc_time

SPLITS = ("train", "val", "test")


class DataConfigError(ValueError):
    """A data configuration that cannot work; the message names the problem."""


@dataclass(frozen=True)
class Windows:
    """The complete windows of one store.

    Attributes:
        context: (N, context_frames) int64 indices of the context frames in the store.
        target: (N, L) int64 indices of the frames at each lead time.
        init_time: (N,) datetime64[ns] time of the last context frame.
    """

    context: np.ndarray
    target: np.ndarray
    init_time: np.ndarray

    def __len__(self) -> int:
        return len(self.init_time)

    def select(self, keep: np.ndarray) -> Windows:
        """The windows where the boolean ``keep`` (N,) is true."""
        return Windows(self.context[keep], self.target[keep], self.init_time[keep])


def lead_steps(lead_times: Sequence[int], step_minutes: int) -> np.ndarray:
    """Lead times in minutes -> lead times in steps; refuses non-multiples and non-positives."""
    leads = np.asarray(lead_times, dtype=np.int64)
    if leads.ndim != 1 or len(leads) == 0:
        raise DataConfigError("lead_times must be a non-empty list of minutes")
    bad = leads[(leads <= 0) | (leads % step_minutes != 0)]
    if len(bad):
        raise DataConfigError(
            f"lead time {int(bad[0])} min is not a positive multiple of step_minutes={step_minutes}"
        )
    return leads // step_minutes


def sampling_step(store_step: int, step: int) -> int:
    """The step (minutes) a store's windows take in a configuration of ``step`` minutes.

    ``step`` itself when the store's step divides it (a 2-minute store in a 10-minute
    configuration keeps every 5th frame); otherwise the shortest multiple of the store's
    step that is at least ``step`` (a 6-minute store in a 5-minute configuration: 6; a
    15-minute store: 15), and the store's windows then only train (see
    :func:`store_lead_times`).
    """
    if step % store_step == 0:
        return step
    return -(-step // store_step) * store_step


def store_lead_times(lead_times: Sequence[int], step: int) -> np.ndarray:
    """The lead times (minutes) of a store sampled every ``step`` minutes: each configured
    lead rounded to the nearest multiple of ``step`` (halves up), repeats and 0 dropped.

    The configured leads themselves when ``step`` divides them all; for a 6-minute store and
    leads 5, 10, ..., 60: 6, 12, ..., 60 (10 leads); for a 15-minute store: 15, 30, 45, 60.
    Never more leads than configured, so a store's samples fit the configured lead slots.
    """
    rounded = np.floor(np.asarray(lead_times, np.float64) / step + 0.5).astype(np.int64) * step
    return np.unique(rounded[rounded > 0])


def store_sampling(store_step: int, step: int, lead_times: Sequence[int],
                   name: str) -> tuple[int, np.ndarray]:
    """The step (minutes, :func:`sampling_step`) and lead times (minutes,
    :func:`store_lead_times`) of the windows of a store stepping every ``store_step``
    minutes in a configuration of ``step`` minutes and ``lead_times``.

    Raises:
        DataConfigError: the store's step leaves no lead to sample (``name`` in the message).
    """
    own = sampling_step(store_step, step)
    leads = store_lead_times(lead_times, own)
    if not len(leads):
        raise DataConfigError(f"{name}: its {store_step}-minute step is more than twice the "
                              f"longest lead time ({max(lead_times)} min), so it has no lead "
                              f"to sample; add a lead time of {own} min")
    return own, leads


def grid_frames(times: np.ndarray, store_step: int, step: int, name: str) -> np.ndarray:
    """Indices of the store frames that lie on the ``step``-minute grid.

    A store whose step equals ``step`` keeps all frames. A store step that
    divides ``step`` (2 -> 10 min) keeps every k-th instant: those on the
    phase (time modulo ``step``) held by most frames, ties going to the
    earliest phase, so a clock-aligned archive keeps :00, :10, ... Any other
    store step is refused.

    Args:
        times: (T,) datetime64[ns] frame times, strictly increasing.
        store_step: the store's nominal step in minutes.
        step: the configured step in minutes.
        name: the store, for messages.
    """
    if step % store_step != 0:
        raise DataConfigError(
            f"{name}: its {store_step}-minute step does not divide step_minutes={step}; "
            f"choose a step_minutes that is a multiple of {store_step}"
        )
    minutes = times.astype("datetime64[m]").astype(np.int64)
    phase = minutes % step
    counts = np.bincount(phase, minlength=step)
    return np.flatnonzero(phase == int(np.argmax(counts)))


def complete_windows(
    times: np.ndarray, step: int, context_frames: int, leads: np.ndarray,
    context_stride: int = 1,
) -> Windows:
    """All complete windows of a sequence of frames on one step grid.

    Args:
        times: (T,) datetime64[ns] frame times, strictly increasing, on the grid.
        step: grid step in minutes.
        context_frames: frames of context, ending at the init time.
        leads: (L,) lead times in steps.
        context_stride: steps between context frames.
    """
    if len(times) == 0:
        return Windows(np.zeros((0, context_frames), np.int64), np.zeros((0, len(leads)),
                       np.int64), times[:0])
    position = (times - times[0]).astype("timedelta64[m]").astype(np.int64) // step
    frame_at = np.full(position[-1] + 1, -1, dtype=np.int64)
    frame_at[position] = np.arange(len(times))
    offsets = np.concatenate([np.arange(1 - context_frames, 1) * context_stride, leads])
    wanted = position[:, None] + offsets[None, :]
    inside = (wanted >= 0) & (wanted < len(frame_at))
    index = np.where(inside, frame_at[np.clip(wanted, 0, len(frame_at) - 1)], -1)
    complete = (index >= 0).all(axis=1)
    index = index[complete]
    return Windows(index[:, :context_frames], index[:, context_frames:],
                   times[index[:, context_frames - 1]])


def split_bounds(
    times: np.ndarray,
    fractions: Sequence[float] | None,
    boundaries: Sequence[str] | None,
) -> tuple[np.datetime64, np.datetime64]:
    """The instants where val and test start, for one store.

    Args:
        times: (T,) datetime64[ns] frame times of the store.
        fractions: (train, val, test) shares of the store's frames, in time
            order; used when ``boundaries`` is None.
        boundaries: ISO UTC times ``[val_start, test_start]``, the same for every store.
    """
    if boundaries is not None:
        if len(boundaries) != 2:
            raise DataConfigError("split_times must be [val_start, test_start] (two ISO times)")
        val_start, test_start = (utc_time(b) for b in boundaries)
    else:
        if fractions is None or len(fractions) != 3 or min(fractions) < 0:
            raise DataConfigError("split_fractions must be three shares >= 0 (train, val, test)")
        cumulative = np.cumsum(fractions) / np.sum(fractions)
        last = np.datetime64(times[-1]) + np.timedelta64(1, "ns")
        val_start, test_start = (
            times[int(np.floor(c * len(times)))] if c < 1 else last for c in cumulative[:2]
        )
    if test_start < val_start:
        raise DataConfigError(f"split_times: test starts ({test_start}) before val ({val_start})")
    return val_start, test_start


def split_windows(
    windows: Windows,
    times: np.ndarray,
    bounds: tuple[np.datetime64, np.datetime64],
) -> dict[str, Windows]:
    """Assign each window to the split that holds its whole footprint; drop the rest.

    Splits are the intervals ``[-inf, val_start)``, ``[val_start, test_start)``
    and ``[test_start, inf)``. A window that straddles a boundary belongs to
    no split, so the frames used by different splits are disjoint and
    consecutive splits' init times are more than a footprint (context span +
    longest lead) apart: nothing a val/test target sees is ever a training input.
    """
    first = times[windows.context[:, 0]]
    last = times[windows.target.max(axis=1)]
    edges = [np.datetime64("1677-09-22", "ns"), *bounds, np.datetime64("2262-04-10", "ns")]
    return {
        name: windows.select((first >= lo) & (last < hi))
        for name, lo, hi in zip(SPLITS, edges[:-1], edges[1:], strict=True)
    }


def parse_split_ranges(
    splits: dict[str, Sequence[Sequence[str]]],
) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """Date ranges per split, e.g. ``{"train": [["2018-01-01", "2022-01-01"]], "val":
    [["2022-01-01", "2023-01-01"]], "test": [["2023-01-01", "2024-01-01"]]}``: each range
    ``[start, end)`` in ISO (naive = UTC); a split may have several; times in no range are
    used by no split.

    Raises:
        DataConfigError: an unknown split, a range that is not two times in order, or ranges
            of different splits that overlap.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DataConfigError(f"splits: unknown split(s) {', '.join(unknown)}; the splits are "
                              f"{', '.join(SPLITS)}")
    ranges: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    for split, items in splits.items():
        ranges[split] = []
        for item in items:
            try:
                lo, hi = (utc_time(t) for t in item)
            except (TypeError, ValueError) as err:
                raise DataConfigError(f"splits: {split} range {item!r} is not [start, end] in "
                                      f"ISO ({err})") from None
            if not lo < hi:
                raise DataConfigError(f"splits: {split} range {item!r} ends before it starts")
            ranges[split].append((lo, hi))
    flat = sorted((lo, hi, split) for split, items in ranges.items() for lo, hi in items)
    for (_, hi, a), (lo, _, b) in zip(flat[:-1], flat[1:], strict=True):
        if lo < hi and a != b:
            raise DataConfigError(f"splits: the {a} and {b} ranges overlap (at {lo})")
    return ranges


def windows_in_ranges(
    windows: Windows, times: np.ndarray, ranges: Sequence[tuple[np.datetime64, np.datetime64]],
) -> Windows:
    """The windows whose whole footprint (first context frame to last target) lies in one of
    ``ranges`` (``[start, end)``)."""
    first = times[windows.context[:, 0]]
    last = times[windows.target.max(axis=1)]
    inside = np.zeros(len(windows), dtype=bool)
    for lo, hi in ranges:
        inside |= (first >= lo) & (last < hi)
    return windows.select(inside)


def training_only(windows: Windows) -> dict[str, Windows]:
    """Every window to the train split, none to val or test: a store sampled at another step
    than the configuration's, whose scores would be at other lead times."""
    none = windows.select(np.zeros(len(windows), dtype=bool))
    return {"train": windows, "val": none, "test": none}
