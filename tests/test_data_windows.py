"""Complete windows, the step grid and time splits (metnet.data.windows), on plain times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metnet.data.windows import (
    DataConfigError,
    complete_windows,
    grid_frames,
    lead_steps,
    parse_split_ranges,
    sampling_step,
    split_bounds,
    split_windows,
    store_lead_times,
    windows_in_ranges,
)


def _times(n: int, step: int = 5, start: str = "2024-06-01T12:00", drop=()) -> np.ndarray:
    times = pd.date_range(start, periods=n, freq=f"{step}min").values.astype("datetime64[ns]")
    return np.delete(times, list(drop))


def test_every_window_is_complete_and_none_spans_a_gap():
    times = _times(40, drop=range(17, 20))  # frames 17, 18, 19 missing
    leads = lead_steps([5, 10, 20], 5)
    windows = complete_windows(times, 5, 3, leads)
    step = np.timedelta64(5, "m")
    for context, target, init in zip(windows.context, windows.target, windows.init_time,
                                     strict=True):
        np.testing.assert_array_equal(np.diff(times[context]), [step, step])
        assert times[context[-1]] == init
        np.testing.assert_array_equal(times[target] - init, leads * step)
    # a window needs frames init-2 .. init+4; full grid 0..39 minus 17..19
    grid_inits = [g for g in range(2, 36) if not set(range(g - 2, g + 5)) & {17, 18, 19}]
    expected = pd.date_range("2024-06-01T12:00", periods=40, freq="5min")[grid_inits]
    np.testing.assert_array_equal(windows.init_time, expected.values)


def test_two_minute_store_keeps_every_fifth_frame_for_a_ten_minute_step():
    times = _times(30, step=2, start="2019-06-10T00:00")
    kept = grid_frames(times, 2, 10, "mrms")
    np.testing.assert_array_equal(kept, np.arange(0, 30, 5))
    windows = complete_windows(times[kept], 10, 2, lead_steps([10, 20], 10))
    assert len(windows) == 6 - 1 - 2


def test_grid_phase_is_the_one_most_frames_sit_on():
    times = _times(12, step=5, start="2024-01-01T00:05")  # :05, :10, ..., :00
    kept = grid_frames(times, 5, 10, "s")
    minutes = pd.DatetimeIndex(times[kept]).minute
    assert set(minutes % 10) == {0} and len(kept) == 6


def test_step_that_does_not_divide_is_refused_in_one_line():
    with pytest.raises(DataConfigError, match="6-minute step does not divide step_minutes=5"):
        grid_frames(_times(10, step=6), 6, 5, "bom")


@pytest.mark.parametrize(("store_step", "step", "sampled"),
                         [(5, 5, 5), (2, 10, 10), (6, 5, 6), (15, 5, 15), (2, 5, 6), (4, 10, 12)])
def test_a_store_is_sampled_at_the_step_or_the_shortest_multiple_of_its_own(store_step, step,
                                                                          sampled):
    assert sampling_step(store_step, step) == sampled
    assert sampled % store_step == 0 and sampled >= step


def test_store_lead_times_round_to_the_store_step_and_never_outnumber_the_configured():
    five = list(range(5, 61, 5))
    assert store_lead_times(five, 5).tolist() == five
    assert store_lead_times(five, 6).tolist() == list(range(6, 61, 6))
    assert store_lead_times(five, 15).tolist() == [15, 30, 45, 60]
    assert store_lead_times([30, 60], 6).tolist() == [30, 60]
    assert store_lead_times([5, 10, 20], 30).tolist() == [30]  # 5 and 10 min round to 0
    assert store_lead_times([5, 10], 30).tolist() == []


@pytest.mark.parametrize("leads", [[5, 7], [0, 5], []])
def test_bad_lead_times_are_refused(leads):
    with pytest.raises(DataConfigError, match="lead"):
        lead_steps(leads, 5)


@pytest.mark.parametrize("boundaries", [None, ["2024-06-01T22:00", "2024-06-02T04:00"]])
def test_splits_share_no_frame_and_are_buffered(boundaries):
    times = _times(288, drop=[50, 51, 200])
    context, leads = 7, lead_steps(list(range(5, 65, 5)), 5)
    windows = complete_windows(times, 5, context, leads)
    bounds = split_bounds(times, (0.7, 0.15, 0.15), boundaries)
    splits = split_windows(windows, times, bounds)
    assert all(len(w) > 0 for w in splits.values())
    used = {
        name: set(np.concatenate([w.context.ravel(), w.target.ravel()]).tolist())
        for name, w in splits.items()
    }
    assert not used["train"] & used["val"] and not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    buffer = np.timedelta64(5 * (context + int(leads.max())), "m")
    for early, late in [("train", "val"), ("val", "test")]:
        assert splits[late].init_time.min() - splits[early].init_time.max() >= buffer
    assert times[max(used["train"])] < bounds[0] <= times[min(used["val"])]
    assert sum(len(w) for w in splits.values()) < len(windows)  # straddlers dropped


def test_split_times_are_utc_and_ordered():
    times = _times(20)
    val, test = split_bounds(times, None, ["2024-06-01T14:00+02:00", "2024-06-01T13:00"])
    assert val == np.datetime64("2024-06-01T12:00", "ns") and test > val
    with pytest.raises(DataConfigError, match="before val"):
        split_bounds(times, None, ["2024-06-01T13:00", "2024-06-01T12:30"])
    with pytest.raises(DataConfigError, match="three shares"):
        split_bounds(times, (0.5, 0.5), None)


def test_context_frames_can_be_spaced_wider_than_the_lead_grid():
    times = _times(30, drop=[4])
    windows = complete_windows(times, 5, 3, lead_steps([5, 10], 5), context_stride=3)
    offsets = (times[windows.context] - windows.init_time[:, None]) // np.timedelta64(5, "m")
    assert (offsets == [-6, -3, 0]).all()
    grid_inits = [g for g in range(6, 28) if 4 not in {g - 6, g - 3, g, g + 1, g + 2}]
    assert grid_inits == [6, 8, 9, *range(11, 28)]
    expected = pd.date_range("2024-06-01T12:00", periods=30, freq="5min")[grid_inits]
    np.testing.assert_array_equal(windows.init_time, expected.values)


def test_date_range_splits_keep_each_window_inside_one_range():
    """Splits by date ranges, as multi-year archives are split: a range may leave time out,
    a split may have several ranges, and a window whose footprint crosses a range's end
    belongs to none."""
    times = _times(288, start="2024-06-01T00:00")  # to 23:55
    windows = complete_windows(times, 5, 4, lead_steps([5, 10, 30], 5))
    ranges = parse_split_ranges({
        "train": [["2024-06-01T00:00", "2024-06-01T08:00"],
                  ["2024-06-01T20:00", "2024-06-02T00:00"]],
        "val": [["2024-06-01T10:00", "2024-06-01T14:00"]],
        "test": [["2024-06-01T16:00+02:00", "2024-06-01T18:00+02:00"]]})  # 14:00-16:00 UTC
    test = windows_in_ranges(windows, times, ranges["test"])
    assert times[test.context[:, 0]].min() >= np.datetime64("2024-06-01T14:00")
    assert times[test.target.max(axis=1)].max() < np.datetime64("2024-06-01T16:00")
    # 24 frames in 2 h; a window spans 3 + 6 steps (15 min of context, 30 min of leads)
    assert len(test) == 24 - (3 + 6)
    train = windows_in_ranges(windows, times, ranges["train"])
    starts = times[train.context[:, 0]]
    ends = times[train.target.max(axis=1)]
    in_first = ends < np.datetime64("2024-06-01T08:00")
    in_second = starts >= np.datetime64("2024-06-01T20:00")
    assert (in_first | in_second).all() and in_first.any() and in_second.any()
    assert not ((starts >= np.datetime64("2024-06-01T08:00"))
                & (starts < np.datetime64("2024-06-01T20:00"))).any()


@pytest.mark.parametrize(("splits", "message"), [
    ({"training": [["2024-01-01", "2024-02-01"]]}, "unknown split.s. training"),
    ({"train": [["2024-02-01", "2024-01-01"]]}, "ends before it starts"),
    ({"train": [["2024-01-01"]]}, "is not .start, end. in ISO"),
    ({"train": [["2024-01-01", "2024-03-01"]], "val": [["2024-02-01", "2024-04-01"]]},
     "the train and val ranges overlap"),
])
def test_bad_date_range_splits_are_refused(splits, message):
    with pytest.raises(DataConfigError, match=message):
        parse_split_ranges(splits)
