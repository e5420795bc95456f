"""NowcastDataModule on real archives from ../shared/data, ingested once per session.

Skipped, with the reason, when ../shared/data is absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import torch

from metnet.data.datamodule import NowcastDataModule
from metnet.data.frames import StoreFrames
from metnet.data.windows import DataConfigError
from metnet.io.store import make_dataset, open_store, write_store
from metnet.transforms import input_to_rate

pytestmark = [pytest.mark.real_data, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def fmi(ingested_store):
    return ingested_store("fmi", "radar/fmi")


@pytest.fixture(scope="module")
def knmi(ingested_store):
    return ingested_store("knmi", "radar/KNMI")


def test_default_samples_from_two_real_domains(fmi, knmi):
    """FMI (two events a year apart) and KNMI (74% no coverage) at the default sample shape."""
    dm = NowcastDataModule([str(fmi), str(knmi)], split_fractions=(0.5, 0.25, 0.25),
                           batch_size=4)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert [len(w) for w in train.windows] == [40 - 19 + 1, 46 - 19 + 1]
    step = np.timedelta64(5, "m")
    for domain, windows in zip(train.domains, train.windows, strict=True):
        times = domain.frames.times
        span = times[windows.target[:, -1]] - times[windows.context[:, 0]]
        assert (span == 18 * step).all()  # never across FMI's two events
    batch = next(iter(dm.train_dataloader()))
    assert batch["context"].shape == (4, 7, 2, 256, 256)
    assert batch["target"].shape == batch["target_mask"].shape == (4, 12, 64, 64)
    observed = [train[i]["target_mask"].float().mean() for i in range(len(train))]
    assert np.mean(observed) > 0.8  # patches are drawn where the radar sees
    knmi_first = int(train.offsets[1])
    assert train[knmi_first]["store"] == "knmi" and train[0]["store"] == "fmi"


def test_six_minute_bom_trains_beside_five_minute_knmi_and_needs_matching_pixels(
        ingested_store, knmi):
    bom = ingested_store("bom", "radar/bom")
    bom_1km = ingested_store("bom", "radar/bom", coarsen=2)
    dm = NowcastDataModule([str(knmi), str(bom_1km)], context_size=128, target_size=32,
                           split_fractions=(0.5, 0.25, 0.25))
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train.windows[1]) == 61 - (6 * 6 + 60) // 6  # all of BOM's windows train
    assert train[len(train) - 1]["lead_times"].tolist() == list(range(6, 61, 6)) + [60, 60]
    assert {dm.datasets["val"][i]["store"] for i in range(len(dm.datasets["val"]))} == {"knmi"}
    dm = NowcastDataModule([str(bom)], step_minutes=6, lead_times=list(range(6, 61, 6)),
                           context_size=128, target_size=32, split_fractions=(0.4, 0.3, 0.3))
    dm.setup("fit")
    assert dm.datasets["val"][0]["lead_times"].tolist() == list(range(6, 61, 6))
    with pytest.raises(DataConfigError, match="different pixel sizes"):
        NowcastDataModule([str(knmi), str(bom)], step_minutes=30, lead_times=[30]).setup()
    dm = NowcastDataModule([str(knmi), str(bom_1km)], step_minutes=30, lead_times=[30],
                           context_frames=2)
    dm.setup()
    assert {dm.datasets["train"][i]["store"] for i in (0, len(dm.datasets["train"]) - 1)} == {
        "knmi", "bom"}


def test_opera_outliers_are_masked_not_kept(ingested_store):
    opera = ingested_store("opera", "radar/OPERA", "2018-08-24T18:00", "2018-08-24T19:00")
    raw = open_store(opera)["rain_rate"].values
    assert (raw > 200).sum() > 0
    frames = StoreFrames(opera).read(np.arange(len(raw)), slice(None), slice(None))
    assert np.nanmax(frames) <= 200
    np.testing.assert_array_equal(np.isnan(frames), np.isnan(raw) | (raw > 200))


def test_saf_satellite_on_the_fmi_grid(ingested_store, fmi, tmp_path):
    """SAF CRR (geostationary, 15 min) resampled onto the FMI grid at the SAF's own times."""
    saf = ingested_store("saf-crr", "saf", "2018-06-01T12:00", "2018-06-01T13:00")
    grid = open_store(fmi)
    times = pd.date_range("2018-06-01T12:00", periods=13, freq="5min")
    rain = np.zeros((len(times), grid.sizes["y"], grid.sizes["x"]), np.float32)
    radar = write_store(make_dataset(rain, times, grid.x.values, grid.y.values,
                                     crs=grid.attrs["crs"], source="fmi", step_minutes=5),
                        tmp_path / "fmi_grid.zarr")
    dm = NowcastDataModule([str(radar)], context_frames=3, lead_times=[5], cache="lazy",
                           split_fractions=(1, 0, 0), satellite_stores=[str(saf)])
    dm.setup(None)
    sample = dm.datasets["train"][len(dm.datasets["train"]) - 1]
    mask = sample["context"][-1, 3]
    assert mask.float().mean() > 0.5  # Finland is inside the SAF Europe view
    sat = open_store(saf)
    init = np.datetime64(sample["init_time"], "ns")
    frame = sat["rain_rate"].sel(time=init, method="pad").values
    to_geos = pyproj.Transformer.from_crs(grid.attrs["crs"], sat.attrs["crs"], always_xy=True)
    rng = np.random.default_rng(0)
    for r, c in rng.integers(0, 256, size=(20, 2)):
        if not mask[r, c]:
            continue
        sx, sy = to_geos.transform(grid.x.values[sample["col"] + c],
                                   grid.y.values[sample["row"] + r])
        expected = frame[np.abs(sat.y.values - sy).argmin(), np.abs(sat.x.values - sx).argmin()]
        got = input_to_rate(sample["context"][-1, 2, r, c])
        assert got == pytest.approx(expected, abs=1e-4)
    assert torch.isfinite(sample["context"]).all()
