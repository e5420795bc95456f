"""The synthetic radar generator: deterministic, store-conformant, physically plausible."""

import numpy as np
import pytest
from pysteps import motion, nowcasts
from pysteps.verification.detcatscores import det_cat_fct

from metnet.io.store import open_store, validate, write_store
from metnet.io.synthetic import synthesize


@pytest.fixture(scope="module")
def sequence():
    return synthesize(frames=24, height=128, width=160, seed=3)


def test_same_seed_same_sequence_other_seed_other_sequence(sequence):
    again = synthesize(frames=24, height=128, width=160, seed=3)
    other = synthesize(frames=24, height=128, width=160, seed=4)
    np.testing.assert_array_equal(sequence.rain_rate.values, again.rain_rate.values)
    assert not np.array_equal(
        np.nan_to_num(sequence.rain_rate.values), np.nan_to_num(other.rain_rate.values)
    )


def test_store_format_and_round_trip(sequence, tmp_path):
    validate(sequence)
    path = write_store(sequence, tmp_path / "synthetic.zarr")
    stored = open_store(path)
    assert stored.rain_rate.dtype == np.float32
    assert stored.attrs["step_minutes"] == 5 and stored.attrs["source"] == "synthetic"
    np.testing.assert_array_equal(stored.rain_rate.values, sequence.rain_rate.values)
    assert (np.diff(stored.time.values) == np.timedelta64(5, "m")).all()


def test_nan_exactly_outside_circular_coverage(sequence):
    rain = sequence.rain_rate.values
    rows, cols = np.mgrid[0:128, 0:160]
    inside = (rows - 63.5) ** 2 + (cols - 79.5) ** 2 <= 63.5**2
    assert np.isnan(rain[:, ~inside]).all()
    assert np.isfinite(rain[:, inside]).all()


def test_rain_is_intermittent_and_heavy_tailed(sequence):
    rain = sequence.rain_rate.values
    wet = rain[np.isfinite(rain)] > 0.1
    assert 0.03 < wet.mean() < 0.6
    assert np.nanmin(rain) >= 0
    assert 10 < np.nanmax(rain) <= 150


def test_rain_moves_so_that_extrapolation_beats_persistence():
    rain = np.nan_to_num(synthesize(frames=12, seed=1).rain_rate.values)
    velocity = motion.get_method("LK")(np.log(rain[:3] + 0.1))
    forecast = nowcasts.get_method("extrapolation")(rain[2], velocity, 6)
    extrapolation = det_cat_fct(forecast[5], rain[8], 1.0, ["CSI"])["CSI"]
    persistence = det_cat_fct(rain[2], rain[8], 1.0, ["CSI"])["CSI"]
    assert np.abs(np.nanmean(velocity, axis=(1, 2))).max() > 0.5  # pixels per step
    assert extrapolation > persistence + 0.1


def test_odd_sizes():
    assert synthesize(frames=2, height=33, width=47).rain_rate.shape == (2, 33, 47)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="frames"):
        synthesize(frames=0)
