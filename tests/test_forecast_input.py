"""Bad input to `metnet forecast` and `metnet evaluate`: each refused in one line with a
non-zero exit, or handled (skipped with a warning naming it, computed once), never a wrong
result with exit 0."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import run_metnet

from metnet.checkpoint import PIXEL_KEY, Checkpoint, record
from metnet.forecast import ForecastError, forecast_dataset
from metnet.io.store import open_store, write_store
from metnet.io.synthetic import synthesize
from metnet.verification import evaluate

#: The init time whose last context frame the radar missed in :func:`dark_store`.
DARK = "2024-06-01T12:25"


def _forecast(store: Path, checkpoint: Path, out: Path, *args: object,
              init: str | None = "2024-06-01T12:30") -> subprocess.CompletedProcess:
    when = ["--init_time", init] if init else []
    return run_metnet("forecast", "--ckpt_path", checkpoint, "--store", store, *when,
                      "--lead_times", "[5]", "--out", out, *args, cwd=out.parent)


def _evaluate(store: Path, checkpoint: Path, out: Path, *args: object,
              period: tuple[str, str] = ("2024-06-01T12:25", "2024-06-01T12:30")
              ) -> subprocess.CompletedProcess:
    return run_metnet("evaluate", "--ckpt_path", checkpoint, "--store", store, "--start",
                      period[0], "--end", period[1], "--lead_times", "[5]", "--steps_members",
                      "0", "--out", out, *args, cwd=out.parent)


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"metnet {result.args[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def dark_store(tmp_path_factory) -> Path:
    """The store of ``make_store`` (12 frames from 12:00 every 5 min, 1 km pixels) with the
    frame at :data:`DARK` all NaN (the radar saw nothing)."""
    ds = synthesize(frames=12, height=70, width=62, seed=5)
    ds["rain_rate"].loc[{"time": np.datetime64(DARK)}] = np.nan
    return write_store(ds, tmp_path_factory.mktemp("dark") / "dark.zarr")


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize("levels", ["[0.5,1.5]", "[0,0.5]", "[1]"])
def test_quantiles_outside_0_1_are_refused(levels, tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.nc"
    result = _forecast(tiny_store, tiny_checkpoint, out, "--quantiles", levels)
    _one_line_error(result, "quantile levels must be between 0 and 1")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ForecastError, match="between 0 and 1"):
        forecast_dataset(Checkpoint.load(tiny_checkpoint).net, open_store(tiny_store),
                         ["2024-06-01T12:30"], [5], quantiles=[1.5])


@pytest.mark.parametrize("command", ["forecast", "evaluate"])
def test_batch_tiles_below_one_is_refused(command, tiny_store, tiny_checkpoint, tmp_path):
    run = _forecast if command == "forecast" else _evaluate
    result = run(tiny_store, tiny_checkpoint, tmp_path / "out.nc", "--batch_tiles", "0")
    _one_line_error(result, "batch_tiles", "at least 1", "got 0")
    assert list(tmp_path.iterdir()) == []


# -- init times --------------------------------------------------------------------------


def test_the_same_init_time_twice_is_forecast_once(tiny_store, tiny_checkpoint, tmp_path,
                                                   monkeypatch):
    from metnet.data.inputs import StoreContext

    calls = []
    real = StoreContext.read
    monkeypatch.setattr(StoreContext, "read",
                        lambda self, init: calls.append(init) or real(self, init))
    out = tmp_path / "out.nc"
    result = _forecast(tiny_store, tiny_checkpoint, out,
                       init="[2024-06-01T12:35,2024-06-01T12:30,2024-06-01T14:30+02:00]")
    assert result.returncode == 0, result.stderr
    assert len(calls) == 2
    with xr.open_dataset(out) as ds:
        assert ds["init_time"].values.astype("datetime64[m]").astype(str).tolist() == [
            "2024-06-01T12:30", "2024-06-01T12:35"]


@pytest.mark.filterwarnings("ignore:Times can.t be serialized faithfully")
def test_init_times_with_seconds_are_named_and_forecast_exactly(tiny_checkpoint, tmp_path):
    ds = synthesize(frames=12, height=70, width=62, seed=5)
    store = write_store(ds.assign_coords(time=ds["time"].values + np.timedelta64(30, "s")),
                        tmp_path / "seconds.zarr")
    out = tmp_path / "out.nc"
    _one_line_error(_forecast(store, tiny_checkpoint, out, init="2024-06-01T12:25"),
                    "init time 2024-06-01T12:25 is not a time of the store",
                    "from 2024-06-01T12:00:30")
    _one_line_error(_forecast(store, tiny_checkpoint, out, init="2024-06-01T12:05:30"),
                    "init time 2024-06-01T12:05:30 lacks past frames 2024-06-01T11:55:30")
    result = _forecast(store, tiny_checkpoint, out, init="2024-06-01T12:25:30")
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(out) as written:
        assert written["init_time"].values.tolist() == [
            np.datetime64("2024-06-01T12:25:30", "ns").astype(int)]
        assert str(written["valid_time"].values[0, 0]).startswith("2024-06-01T12:30:30")


# -- stores and checkpoints --------------------------------------------------------------


def test_an_init_time_without_radar_data_is_skipped_with_a_warning(dark_store, tiny_checkpoint,
                                                                   tmp_path):
    out = tmp_path / "out.nc"
    result = _forecast(dark_store, tiny_checkpoint, out, init=f"[{DARK},2024-06-01T12:30]")
    assert result.returncode == 0, result.stderr
    assert (f"metnet forecast: warning: init time {DARK}: the last context frame has no "
            "radar data") in result.stderr
    with xr.open_dataset(out) as ds:
        assert ds.sizes["init_time"] == 1
        assert np.isfinite(ds["precip_rate_mean"].values).any()

    alone = tmp_path / "alone.nc"
    result = _forecast(dark_store, tiny_checkpoint, alone, init=DARK)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "metnet forecast: error: none of the 1 init times has radar data in its last context "
        f"frame; nothing written to {alone}")
    assert not alone.exists() and not list(tmp_path.glob(".alone*"))


def test_evaluate_skips_an_init_time_without_radar_data(dark_store, tiny_checkpoint, tmp_path):
    net, ds = Checkpoint.load(tiny_checkpoint).net, open_store(dark_store)
    warned = []
    result = evaluate(net, ds, [np.datetime64(DARK), np.datetime64("2024-06-01T12:30")], [5],
                      steps_members=0, warn=warned.append)
    assert [str(t)[:16] for t in result.init_times] == ["2024-06-01T12:30"]
    assert warned == [f"init time {DARK}: the last context frame has no radar data (NaN "
                      "everywhere); skipped"]
    assert result.scores["value"].notna().any()

    out = tmp_path / "scores"
    cli = _evaluate(dark_store, tiny_checkpoint, out, period=(DARK, DARK))
    assert cli.returncode == 1
    assert cli.stderr.splitlines()[-1].startswith(
        "metnet evaluate: error: none of the 1 init times has radar data")
    assert not (out / "scores.csv").exists()


def test_a_store_of_another_pixel_size_is_refused(tiny_store, tiny_checkpoint, tmp_path):
    contents = torch.load(tiny_checkpoint, weights_only=True)
    assert Checkpoint(contents).pixel_size is None  # fitted without a datamodule: unknown
    record(contents, Checkpoint(contents).net, (2000.0, "m"))
    coarse = tmp_path / "2km.ckpt"
    torch.save(contents, coarse)
    assert Checkpoint.load(coarse).pixel_size == (2000.0, "m")
    for command in (_forecast, _evaluate):
        result = command(tiny_store, coarse, tmp_path / "out.nc")
        _one_line_error(result, "trained on 2000 m pixels; the store's are 1000 m")
    # a grid called "1 km" whose pixels differ in the fourth digit, as FMI's 1999.35 m
    # against 2 km, is the same pixel size
    record(contents, Checkpoint(contents).net, (1000.3, "m"))
    torch.save(contents, coarse)
    assert _forecast(tiny_store, coarse, tmp_path / "out.nc").returncode == 0
    contents[PIXEL_KEY] = {"size": "wide"}
    torch.save(contents, coarse)
    _one_line_error(_forecast(tiny_store, coarse, tmp_path / "again.nc"), "damaged pixel size")


def test_the_datamodule_gives_its_pixel_size_to_the_checkpoint(synthetic_store):
    from metnet.data import NowcastDataModule

    dm = NowcastDataModule(stores=[str(synthetic_store)], context_frames=3, context_size=32,
                           target_size=16, lead_times=[5], batch_size=2)
    assert dm.pixel_size is None
    dm.setup("fit")
    assert dm.pixel_size == (1000.0, "m")


# -- outputs -----------------------------------------------------------------------------


def test_evaluate_refuses_a_folder_with_an_earlier_evaluation(tiny_store, tiny_checkpoint,
                                                              tmp_path):
    out = tmp_path / "scores"
    out.mkdir()
    (out / "scores.csv").write_text("earlier scores\n")
    result = _evaluate(tiny_store, tiny_checkpoint, out)
    _one_line_error(result, f"{out}: holds an earlier evaluation (scores.csv)")
    assert (out / "scores.csv").read_text() == "earlier scores\n"
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv"]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from metnet.atomic import atomic_write
    with atomic_write(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half a netCDF file")
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("name", ["out.nc", "out.zarr", "out"])
def test_a_killed_write_leaves_nothing_after_the_next_run(name, tiny_store, tiny_checkpoint,
                                                          tmp_path):
    out = tmp_path / name
    part = "20240601T1230.nc"  # the file of one init time of a folder output
    destinations = {"out.nc": [out, tmp_path / ".out.nc.parts" / part], "out.zarr": [out],
                    "out": [out / part]}[name]
    for destination in destinations:
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(destination)],
                                capture_output=True)
        assert killed.returncode == -9
    leftovers = sorted(tmp_path.rglob("*.tmp*"))
    assert leftovers  # what a kill while writing leaves
    remote = out.with_name(f".out.123@elsewhere.0123abcd.tmp{out.suffix}")
    remote.write_bytes(b"a writer on another machine, maybe still running")
    result = _forecast(tiny_store, tiny_checkpoint, out)
    assert result.returncode == 0, result.stderr
    assert sorted(tmp_path.rglob("*.tmp*")) == [remote]
