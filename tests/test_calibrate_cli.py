"""Calibration end to end: fitted at the end of ``metnet fit`` on validation only, refitted by
``metnet calibrate``, stored in the checkpoint and applied by forecasts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_metnet

from metnet.calibration import Calibration
from metnet.checkpoint import Checkpoint
from metnet.forecast import forecast_dataset
from metnet.io.store import open_store, write_store
from metnet.io.synthetic import synthesize

REPO = Path(__file__).resolve().parents[1]
LEADS = [5, 15, 30]


def data_overrides(store: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs/synthetic.yaml"),
        "--data.stores", f"[{store}]", "--data.context_size", "48", "--data.target_size", "16",
        "--data.context_frames", "3", "--data.lead_times", "[5, 15, 30]",
        "--data.batch_size", "4", "--data.patches_per_window", "1",
        "--data.motion_inputs", "true", "--data.cache_dir", str(store.parent / "cache"),
    ]


def tiny_overrides(store: Path) -> list[str]:
    return data_overrides(store) + [
        "--model.net.init_args.lstm_hidden", "16", "--model.net.init_args.num_blocks", "2",
        "--model.net.init_args.conditioned_from", "1", "--model.net.init_args.heads", "2",
        "--model.net.init_args.downsampler_channels", "[8, 16]",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--trainer.enable_progress_bar", "false",
    ]


def _store_copy(source, path: Path, scale_from: int | None = None,
                scale_to: int | None = None) -> Path:
    """A copy of a synthetic dataset with frames [scale_from, scale_to) times 5."""
    ds = source.copy(deep=True)
    if scale_from is not None:
        ds["rain_rate"][scale_from:scale_to] = ds["rain_rate"][scale_from:scale_to] * 5.0
    return write_store(ds, path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 60-frame store, and copies with the test or the validation frames changed
    (default split 0.7/0.15/0.15: frames 42-50 validate, 51-59 test)."""
    root = tmp_path_factory.mktemp("calibrate")
    ds = synthesize(frames=60, height=96, width=96, seed=5)
    return {"same": _store_copy(ds, root / "a" / "s.zarr"),
            "test_changed": _store_copy(ds, root / "b" / "s.zarr", 51, 60),
            "val_changed": _store_copy(ds, root / "c" / "s.zarr", 42, 51)}


@pytest.fixture(scope="module")
def trained(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    result = run_metnet("fit", *tiny_overrides(stores["same"]), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "outputs/checkpoints/best.ckpt"


def test_fit_stores_a_validation_calibration_in_the_best_checkpoint(trained: Path) -> None:
    calibration = Checkpoint.load(trained).calibration
    assert calibration is not None and calibration.lead_times == LEADS
    assert calibration.thresholds == [0.1, 1.0, 4.0, 8.0]
    header = next(trained.parents[1].glob("csv/version_*/metrics.csv")).read_text()
    assert "val/extrapolation/csi_1" in header and "val/extrapolation/crps/lead_30" in header


def _calibrate(ckpt: Path, store: Path, tmp_path: Path, name: str) -> str:
    """The calibration ``metnet calibrate`` fits on ``store`` for a copy of ``ckpt``, as
    canonical JSON (so that NaN scores compare equal)."""
    copy = tmp_path / f"{name}.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    result = run_metnet("calibrate", "--ckpt_path", str(copy), *data_overrides(store),
                        "--device", "cpu", cwd=tmp_path)  # as fit calibrated it
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probability_threshold" in result.stdout
    return _canonical(Checkpoint.load(copy).calibration)


def _canonical(calibration: Calibration) -> str:
    return json.dumps(calibration.to_dict(), sort_keys=True)


@pytest.mark.slow
def test_calibrate_reads_the_validation_split_only(trained: Path, stores: dict[str, Path],
                                                    tmp_path: Path) -> None:
    same = _calibrate(trained, stores["same"], tmp_path, "same")
    assert same == _canonical(Checkpoint.load(trained).calibration)  # fit's own, reproduced
    assert _calibrate(trained, stores["test_changed"], tmp_path, "test") == same
    assert _calibrate(trained, stores["val_changed"], tmp_path, "val") != same


def test_calibrate_refuses_data_that_do_not_fit_the_checkpoint(trained: Path,
                                                               stores: dict[str, Path],
                                                               tmp_path: Path) -> None:
    result = run_metnet("calibrate", "--ckpt_path", str(trained), *data_overrides(stores["same"]),
                    "--data.motion_inputs", "false", "--data.motion_error", "false",
                    cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("metnet calibrate: error:")
    assert "lead_channels=3 (data gives 0)" in result.stderr
    if not torch.cuda.is_available():
        result = run_metnet("calibrate", "--ckpt_path", str(trained),
                            *data_overrides(stores["same"]), "--device", "cuda", cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            "metnet calibrate: error: --device cuda: this machine has no CUDA GPU that torch "
            "can use (use --device cpu)")


def test_forecast_applies_the_checkpoint_temperature(trained: Path, stores: dict[str, Path],
                                                     tmp_path: Path) -> None:
    net = Checkpoint.load(trained).net
    temperature = {5: 0.7, 15: 1.5, 30: 2.5}
    calibration = Calibration(LEADS, [1.0], list(temperature.values()), [[0.3]] * 3)
    store = open_store(stores["same"])
    init = store["time"].values[30]
    tempered = forecast_dataset(net, store, [init], LEADS, bin_probabilities=True,
                                calibration=calibration)
    raw = forecast_dataset(net, store, [init], LEADS, bin_probabilities=True)
    probs = raw["bin_probability"].values[:, 0]  # (K, L, H, W)
    for j, t in enumerate(temperature.values()):
        expected = probs[:, j] ** (1.0 / t)
        expected /= expected.sum(axis=0)
        np.testing.assert_allclose(tempered["bin_probability"].values[:, 0, j], expected,
                                   atol=1e-5)

    cuts = tempered["decision_probability"]
    assert (cuts.sel(threshold=1.0) == np.float32(0.3)).all()
    assert (cuts.sel(threshold=4.0) == 0.5).all()  # not calibrated: 0.5
    exceed = tempered["probability_of_exceedance"]
    inside = np.isfinite(exceed.values)
    np.testing.assert_array_equal(tempered["rain_forecast"].values[inside],
                                  (exceed >= cuts).values[inside])
    at_half = forecast_dataset(net, store, [init], LEADS, calibration=calibration,
                               calibrated_decisions=False)
    assert (at_half["decision_probability"] == 0.5).all()

    # The store's own calibration (the store is s.zarr), else the pooled one (identity here).
    ckpt = tmp_path / "t.ckpt"
    ckpt.write_bytes(trained.read_bytes())
    pooled = replace(Calibration.identity(LEADS, [1.0]), stores={"s": calibration})
    Checkpoint.load(ckpt).save_calibration(pooled)
    elsewhere = tmp_path / "other.zarr"
    elsewhere.symlink_to(stores["same"], target_is_directory=True)
    import xarray as xr

    for store, expected in ((stores["same"], tempered), (elsewhere, raw)):
        out = tmp_path / f"{store.stem}.nc"
        result = run_metnet("forecast", "--ckpt_path", str(ckpt), "--store", str(store),
                            "--init_time", str(init)[:16], "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        with xr.open_dataset(out) as written:
            np.testing.assert_allclose(written["precip_rate_mean"].values,
                                       expected["precip_rate_mean"].values, rtol=1e-4,
                                       atol=1e-5)


def test_test_scores_the_calibrated_model_and_extrapolation(trained: Path,
                                                            stores: dict[str, Path]) -> None:
    workdir = trained.parents[2]
    result = run_metnet("test", *tiny_overrides(stores["same"]), "--ckpt_path", str(trained),
                    cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("test/model/csi_1", "test/model_calibrated/csi_1",
                "test/model_calibrated/crps", "test/extrapolation/csi_1",
                "test/persistence/crps"):
        assert key in result.stdout


def test_forecast_refuses_a_store_on_another_time_grid(trained: Path, stores: dict[str, Path],
                                                        tmp_path: Path) -> None:
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["context_step_minutes"] = 12
    ckpt = tmp_path / "12min.ckpt"
    torch.save(checkpoint, ckpt)
    result = run_metnet("forecast", "--ckpt_path", str(ckpt), "--store", str(stores["same"]),
                    "--init_time", "2024-06-01T15:00", "--out", str(tmp_path / "f.nc"),
                    cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "f.nc").exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("metnet forecast: error:") and "12 min apart" in last
