"""Every model that ``fit`` trains can forecast: satellite, static and time channels and a
context spacing other than the store's step, built for forecasts by the code that builds the
training samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import TINY, run_metnet

from metnet.checkpoint import Checkpoint
from metnet.data.datamodule import NowcastDataModule
from metnet.data.inputs import ModelInput
from metnet.forecast import ForecastError, default_context, forecast_dataset, store_context
from metnet.io.store import make_dataset, open_store, write_store
from metnet.io.synthetic import synthesize
from metnet.models import MetNet
from metnet.nowcasts.model import Tiling, padded_input
from metnet.training import NowcastModule

INIT = "2024-06-01T13:00"


def _satellite_store(path: Path, lon: np.ndarray, lat: np.ndarray, start: str) -> Path:
    """15-minute frames of a rain rate (mm/h) linear in lon/lat plus the frame number, on a
    lon/lat grid (pixel centres ``lon`` x ``lat``, degrees), 13 frames from ``start``."""
    times = pd.date_range(start, periods=13, freq="15min")
    frame = np.arange(len(times))[:, None, None]
    rain = (0.5 * (lon[None, None, :] - lon[0]) + (lat[None, :, None] - lat[-1])
            + frame).astype(np.float32)
    ds = make_dataset(rain, times, lon, lat, crs="EPSG:4326", source="sat", step_minutes=15,
                      xy_units="degrees")
    return write_store(ds, path)


@pytest.mark.real_data
def test_training_samples_and_forecasts_build_the_same_input(ingested_store, tmp_path):
    """On real KNMI radar with a satellite store, lat/lon and time channels and contexts 10
    min apart on a 5-minute store: each training sample's context equals the forecast input
    over the same frames and pixels, channel by channel."""
    knmi = ingested_store("knmi", "radar/KNMI", "2010-08-26T04:00", "2010-08-26T05:35",
                          coarsen=4)
    satellite = _satellite_store(tmp_path / "sat.zarr", np.arange(0.0, 12.0, 0.05),
                                 np.arange(56.5, 48.5, -0.05), "2010-08-26T03:30")
    dm = NowcastDataModule([str(knmi)], context_frames=3, context_size=48, target_size=16,
                           lead_times=[5], context_step_minutes=10, split_fractions=(1, 0, 0),
                           satellite_stores=[str(satellite)], satellite_interpolation="bilinear",
                           static_channels=True, time_channels=True)
    dm.setup(None)
    net = MetNet(**{**TINY, "input_channels": dm.num_channels})
    context = store_context(open_store(knmi), net, dict(dm.hparams))
    assert context.sources.channel_names == dm.channel_names and context.step_minutes == 10
    dataset = dm.datasets["train"]
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        sample = dataset[index]
        _, inputs = context.read(np.datetime64(sample["init_time"], "ns"))
        rows = slice(sample["row"], sample["row"] + 48)
        cols = slice(sample["col"], sample["col"] + 48)
        for channel, name in enumerate(dm.channel_names):
            np.testing.assert_array_equal(inputs.planes[:, channel, rows, cols],
                                          sample["context"][:, channel].numpy(), err_msg=name)
    planes = dict(zip(dm.channel_names, inputs.planes.swapaxes(0, 1), strict=True))
    assert 0 < planes["rain_mask"].mean() < 1 and planes["sat0_mask"].mean() > 0.9
    assert np.ptp(planes["lat"]) > 0 and np.ptp(planes["sin_tod"][:, 0, 0]) > 0


def test_observations_pad_as_not_observed_and_other_channels_continue_their_edge():
    planes = np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3) + 1
    padded = padded_input(np.zeros((2, 3, 3)), Tiling((3, 3), (7, 7), (3, 3), (3, 3)),
                          ModelInput(planes, observed_channels=2))
    assert padded.shape == (2, 4, 7, 7)
    assert (padded[:, :2, :2] == 0).all() and (padded[:, :2, :, -2:] == 0).all()
    torch.testing.assert_close(padded[:, 2:, 2:5, 2:5], torch.from_numpy(planes[:, 2:]))
    torch.testing.assert_close(padded[:, 2:, 0, 0], torch.from_numpy(planes[:, 2:, 0, 0]))
    torch.testing.assert_close(padded[:, 2:, -1, 3], torch.from_numpy(planes[:, 2:, -1, 1]))


def _fit(store: Path, folder: Path, **data: object) -> Path:
    """A checkpoint of the :data:`TINY` network fitted 2 steps on ``store`` with the data
    settings ``data``."""
    dm = NowcastDataModule([str(store)], context_frames=3, context_size=32, target_size=16,
                           lead_times=[5, 10], split_fractions=(0.5, 0.5, 0.0), batch_size=2,
                           **data)
    torch.manual_seed(0)
    module = NowcastModule(net=MetNet(**{**TINY, "input_channels": dm.num_channels}),
                           warmup_steps=1)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(folder / "model.ckpt")
    return folder / "model.ckpt"


def _forecast(store: Path, checkpoint: Path, out: Path, *args: object):
    return run_metnet("forecast", "--ckpt_path", checkpoint, "--store", store, "--init_time",
                      INIT, "--lead_times", "[5,10]", "--out", out, *args, cwd=out.parent)


def _written(out: Path) -> None:
    with xr.open_dataset(out) as ds:
        assert ds.sizes["y"] == 96 and ds.sizes["x"] == 96
        assert np.isfinite(ds["precip_rate_mean"].values).any()


@pytest.fixture(scope="module")
def spaced_checkpoint(synthetic_store: Path, tmp_path_factory) -> Path:
    """Trained with lat/lon and time channels on contexts 10 min apart (a 5-minute store)."""
    return _fit(synthetic_store, tmp_path_factory.mktemp("spaced"), static_channels=True,
                time_channels=True, context_step_minutes=10)


def test_a_model_with_static_and_time_channels_and_spaced_contexts_forecasts(
        synthetic_store, spaced_checkpoint, tmp_path):
    result = _forecast(synthetic_store, spaced_checkpoint, tmp_path / "f.nc")
    assert result.returncode == 0, result.stderr
    _written(tmp_path / "f.nc")


def test_a_checkpoints_network_forecasts_from_python_with_its_data_settings(
        synthetic_store, spaced_checkpoint):
    """``forecast_dataset`` given a checkpoint's network and no context builds the input
    ``metnet forecast`` builds (contexts 10 min apart, lat/lon and time channels), not
    consecutive radar frames."""
    checkpoint = Checkpoint.load(spaced_checkpoint)
    net, ds = checkpoint.net, open_store(synthetic_store)
    assert default_context(ds, net).step_minutes == 10
    given = store_context(ds, net, checkpoint.data_settings)
    default, built = (forecast_dataset(net, ds, [INIT], [5, 10], context=context)
                      for context in (None, given))
    for forecast in (default, built):  # its last line is stamped to the second it was made
        forecast.attrs.pop("history")
    xr.testing.assert_identical(default, built)
    with pytest.raises(ForecastError, match="opened whole by metnet.io.store.open_store"):
        default_context(ds.isel(x=slice(0, 64)), net)


def test_a_store_whose_step_does_not_divide_the_context_spacing_is_refused(
        spaced_checkpoint, tmp_path):
    store = write_store(synthesize(frames=12, height=40, width=40, step_minutes=20, seed=1),
                        tmp_path / "20min.zarr")
    result = _forecast(store, spaced_checkpoint, tmp_path / "f.nc")
    assert result.returncode == 1 and not (tmp_path / "f.nc").exists()
    assert "context frames 10 min apart; the store steps every 20 min" in result.stderr


def test_a_model_with_a_satellite_store_forecasts_and_evaluates(synthetic_store, tmp_path):
    """Trained with a satellite store that is then moved: forecasts name it until
    ``--satellite_stores`` gives its new place."""
    trained = _satellite_store(tmp_path / "a" / "sat.zarr", np.arange(3.0, 7.0, 0.02) + 0.01,
                               np.arange(53.0, 51.0, -0.02) - 0.01, "2024-06-01T12:00")
    checkpoint = _fit(synthetic_store, tmp_path / "run", satellite_stores=[str(trained)])
    moved = tmp_path / "b" / "sat.zarr"
    shutil.move(trained.parent, moved.parent)

    missing = _forecast(synthetic_store, checkpoint, tmp_path / "f.nc")
    assert missing.returncode == 1 and not (tmp_path / "f.nc").exists()
    assert f"{trained}: no such satellite store" in missing.stderr
    given = _forecast(synthetic_store, checkpoint, tmp_path / "f.nc",
                      "--satellite_stores", f"[{moved}]")
    assert given.returncode == 0, given.stderr
    _written(tmp_path / "f.nc")
    folder = tmp_path / "by_init_time"
    assert _forecast(synthetic_store, checkpoint, folder, "--satellite_stores",
                     f"[{moved}]").returncode == 0
    other = shutil.copytree(moved, tmp_path / "c" / "sat.zarr")
    resumed = _forecast(synthetic_store, checkpoint, folder, "--satellite_stores", f"[{other}]")
    assert resumed.returncode == 1 and "made with other settings" in resumed.stderr

    scored = run_metnet("evaluate", "--ckpt_path", checkpoint, "--store", synthetic_store,
                        "--start", INIT, "--end", INIT, "--lead_times", "[5,10]",
                        "--steps_members", "0", "--satellite_stores", f"[{moved}]",
                        "--out", tmp_path / "eval", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert "model" in set(pd.read_csv(tmp_path / "eval" / "scores.csv").method)


def test_a_satellite_store_count_other_than_the_training_one_is_refused(synthetic_store):
    net = MetNet(**{**TINY, "input_channels": 4})
    with pytest.raises(ForecastError, match="trained with 1 satellite store"):
        store_context(open_store(synthetic_store), net, {"satellite_stores": ["sat.zarr"]},
                      satellite_stores=[])
