"""Satellite channels: a lon/lat field of known values, aligned to a radar grid in another CRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest

from metnet.data.datamodule import NowcastDataModule
from metnet.io.store import make_dataset, open_store, write_store
from metnet.transforms import input_to_rate

MISSING_SATELLITE_FRAME = 4  # 13:00 is absent from the satellite store
TOLERANCE = 15


def _field(lon: np.ndarray, lat: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The satellite's rain rate (mm/h): linear in lon/lat, plus the frame number."""
    return 5.0 * (lon - 3.0) + 10.0 * (lat - 51.0) + frame


@pytest.fixture(scope="module")
def satellite_store(tmp_path_factory) -> Path:
    """15-minute frames on a 0.02-degree lon/lat grid around the synthetic radar (52N 5E)."""
    lon = np.arange(3.0, 7.0, 0.02) + 0.01
    lat = np.arange(53.0, 51.0, -0.02) - 0.01
    times = pd.date_range("2024-06-01T12:00", periods=21, freq="15min")
    frames = np.arange(len(times))[:, None, None]
    rain = _field(lon[None, None, :], lat[None, :, None], frames).astype(np.float32)
    keep = np.arange(len(times)) != MISSING_SATELLITE_FRAME
    ds = make_dataset(rain[keep], times[keep], lon, lat, crs="EPSG:4326", source="sat",
                      step_minutes=15, xy_units="degrees")
    return write_store(ds, tmp_path_factory.mktemp("sat") / "satellite.zarr")


def _expected_frame(time: np.datetime64) -> float:
    """The satellite frame a radar frame should take: latest at or before, within tolerance."""
    start = np.datetime64("2024-06-01T12:00", "ns")
    latest = int((time - start) // np.timedelta64(15, "m"))
    if latest == MISSING_SATELLITE_FRAME:
        latest -= 1
    age = time - (start + latest * np.timedelta64(15, "m"))
    return float(latest) if age <= np.timedelta64(TOLERANCE, "m") else np.nan


@pytest.mark.parametrize(("interpolation", "atol"), [("bilinear", 1e-3), ("nearest", 0.16)])
def test_satellite_channel_holds_the_field_at_radar_pixels(
    synthetic_store, satellite_store, interpolation, atol
):
    dm = NowcastDataModule(
        [str(synthetic_store)], context_frames=7, context_size=64, target_size=16,
        lead_times=[5, 10], split_fractions=(1, 0, 0), satellite_stores=[str(satellite_store)],
        satellite_tolerance_minutes=TOLERANCE, satellite_interpolation=interpolation,
    )
    dm.setup(None)
    assert dm.channel_names[2:] == ["sat0", "sat0_mask"] and dm.num_channels == 4
    radar = open_store(synthetic_store)
    to_lonlat = pyproj.Transformer.from_crs(radar.attrs["crs"], "EPSG:4326", always_xy=True)
    step = np.timedelta64(5, "m")
    checked_missing = 0
    for index in range(0, len(dm.datasets["train"]), 3):
        sample = dm.datasets["train"][index]
        rows = slice(sample["row"], sample["row"] + 64)
        cols = slice(sample["col"], sample["col"] + 64)
        lon, lat = to_lonlat.transform(*np.meshgrid(radar.x.values[cols], radar.y.values[rows]))
        for t in range(7):
            time = np.datetime64(sample["init_time"], "ns") - (6 - t) * step
            frame = _expected_frame(time)
            values = input_to_rate(sample["context"][t, 2]).numpy()
            mask = sample["context"][t, 3].numpy()
            if np.isnan(frame):
                assert (mask == 0).all() and (values == 0).all()
                checked_missing += 1
            else:
                assert mask.all()
                np.testing.assert_allclose(values, _field(lon, lat, frame), atol=atol)
    assert checked_missing > 0


def test_radar_pixels_outside_the_satellite_grid_are_masked(tmp_path, synthetic_store):
    lon = np.arange(5.0, 7.0, 0.02) + 0.01  # covers only the radar's eastern half
    lat = np.arange(53.0, 51.0, -0.02) - 0.01
    rain = np.ones((3, len(lat), len(lon)), np.float32)
    times = pd.date_range("2024-06-01T11:00", periods=3, freq="15min")
    store = write_store(make_dataset(rain, times, lon, lat, crs="EPSG:4326", source="sat",
                                     step_minutes=15, xy_units="degrees"), tmp_path / "e.zarr")
    dm = NowcastDataModule(
        [str(synthetic_store)], context_frames=2, context_size=96, target_size=16,
        lead_times=[5], split_fractions=(1, 0, 0), satellite_stores=[str(store)],
        satellite_tolerance_minutes=24 * 60,
    )
    dm.setup(None)
    mask = dm.datasets["train"][0]["context"][0, 3].numpy()
    assert mask[:, :40].sum() == 0 and mask[:, 56:].all()
