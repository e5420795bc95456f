"""Time helpers: every time metnet reads or writes is naive UTC ``datetime64[ns]``.

A time given by a user (command line, configuration) is an ISO 8601 string, naive (taken as
UTC) or with an offset (``2024-06-01T14:00+02:00``, ``...Z``), converted to UTC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TimeLike = str | np.datetime64 | pd.Timestamp


def utc_time(value: TimeLike) -> np.datetime64:
    """An ISO time or instant (naive = UTC, or with an offset) as naive UTC ``datetime64[ns]``.

    Raises:
        ValueError: naming the text that is not a time.
    """
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{value!r} is not an ISO time (e.g. 2024-06-01T12:00)") from err
    if stamp is pd.NaT:
        raise ValueError(f"{value!r} is not an ISO time (e.g. 2024-06-01T12:00)")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.as_unit("ns").to_datetime64()


def utc_index(values: Sequence) -> pd.DatetimeIndex:
    """Times (naive = UTC, or aware) as a naive UTC ``datetime64[ns]`` index."""
    # arrays as they are: a list of a year's Timestamps costs a fifth of a second
    array_like = isinstance(values, (np.ndarray, pd.Index, pd.Series))
    index = pd.DatetimeIndex(pd.to_datetime(values if array_like else list(values)))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.astype("datetime64[ns]")


def iso(time: TimeLike) -> str:
    """``YYYY-mm-ddTHH:MM`` of a time (seconds shown only when there are any)."""
    stamp = pd.Timestamp(time)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S" if stamp.second else "%Y-%m-%dT%H:%M")


def context_times(init_time: np.datetime64, frames: int, step_minutes: int) -> np.ndarray:
    """(frames,) datetime64[ns]: the frame times, oldest first, every ``step_minutes``,
    ending at ``init_time``."""
    offsets = np.arange(1 - frames, 1) * np.timedelta64(step_minutes, "m")
    return (np.datetime64(init_time, "ns") + offsets).astype("datetime64[ns]")


def valid_times(init_time: np.datetime64, lead_times: Sequence[int]) -> np.ndarray:
    """(L,) datetime64[ns]: ``init_time`` plus each lead time (minutes)."""
    leads = np.asarray(lead_times, dtype="timedelta64[m]")
    return (np.datetime64(init_time, "ns") + leads).astype("datetime64[ns]")
