"""Ingest of the real archives in ../shared/data, compared with pysteps read directly.

The rules of ingest (order, idempotence, the writer lock, kill-and-resume, nothing lost) are
tested in this process and, through the ``workers`` fixture, on a Dask cluster of 2 worker
processes.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from pysteps.io import get_method
from pysteps.utils import to_rainrate

from metnet.io.ingest import IngestError, block_mean, ingest
from metnet.io.sources import UnknownSourceError, get_source
from metnet.io.store import open_store
from tests.conftest import run_metnet

# source, folder, (start, end) of a small subset, importer kwargs for the direct read
CASES = [
    ("fmi", "radar/fmi", ("2016-09-28T16:00", "2016-09-28T16:10"), {"gzipped": True}),
    ("mch", "radar/mch", ("2016-07-11T23:50", "2016-07-12T00:00"),
     {"product": "AQC", "unit": "mm", "accutime": 5.0}),
    ("knmi", "radar/KNMI", ("2010-08-26T03:00", "2010-08-26T03:10"), {}),
    ("bom", "radar/bom", ("2018-06-16T12:00", "2018-06-16T12:12"), {}),
    ("opera", "radar/OPERA", ("2018-08-24T18:00", "2018-08-24T18:15"), {}),
    ("mrms", "mrms", ("2019-06-10T00:00", "2019-06-10T00:02"), {}),
    ("saf-crr", "saf", ("2018-06-01T12:00", "2018-06-01T12:15"), {}),
]


def _read_direct(source: str, path: str, kwargs: dict) -> tuple[np.ndarray, dict]:
    spec = get_source(source)
    field, _, metadata = get_method(spec.importer, "importer")(path, **kwargs)
    field = np.ma.filled(np.ma.asarray(field, dtype=float), np.nan)
    if metadata.get("accutime") is None:
        metadata["accutime"] = spec.step_minutes
    return to_rainrate(field, metadata)


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    """The address of a local Dask cluster of 2 single-threaded worker processes."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(params=["in-process", "2 workers"])
def workers(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments of ``ingest``: in this process, or on the 2 workers of a running
    cluster (``--scheduler``; ``--workers 2`` starts one per ingest, tested apart)."""
    if request.param == "in-process":
        return {}
    return {"scheduler": request.getfixturevalue("dask_scheduler")}


@pytest.mark.parametrize(("source", "folder", "period", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_ingested_store_equals_what_pysteps_reads(
    shared_data, tmp_path, source, folder, period, kwargs
):
    out = tmp_path / f"{source}.zarr"
    report = ingest(shared_data / folder, source, out, start=period[0], end=period[1],
                    progress=False)
    ds = open_store(out)
    expected_times = pd.date_range(*period, freq=f"{get_source(source).step_minutes}min")
    assert report.written == len(expected_times) and not report.skipped
    np.testing.assert_array_equal(ds.time.values, expected_times.values)
    assert len(ds.source_file) == len(expected_times)

    last_file = str(ds.source_file.values[-1])
    rate, metadata = _read_direct(source, last_file, kwargs)
    stored = ds.rain_rate.isel(time=-1).values
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(rate))
    np.testing.assert_allclose(stored, rate.astype(np.float32), rtol=1e-6, equal_nan=True)

    scale = 1000.0 if metadata.get("cartesian_unit") == "km" else 1.0
    np.testing.assert_allclose(
        ds.x.values[0], (metadata["x1"] + metadata["xpixelsize"] / 2) * scale, rtol=1e-9)
    np.testing.assert_allclose(
        ds.y.values[0], (metadata["y2"] - metadata["ypixelsize"] / 2) * scale, rtol=1e-9)
    assert ds.attrs["step_minutes"] == get_source(source).step_minutes


def test_knmi_kilometre_grid_is_stored_in_metres_with_an_equivalent_projection(
    shared_data, tmp_path
):
    import pyproj

    out = tmp_path / "knmi.zarr"
    ingest(shared_data / "radar/KNMI", "knmi", out, end="2010-08-26T00:00", progress=False)
    ds = open_store(out)
    to_lonlat = pyproj.Transformer.from_crs(ds.attrs["crs"], "EPSG:4326", always_xy=True)
    # The De Bilt radar sits near the middle of the Dutch composite.
    lon, lat = to_lonlat.transform(ds.x.values[350], ds.y.values[382])
    assert 4.0 < lon < 6.5 and 51.0 < lat < 53.5
    assert ds.x.attrs["units"] == "m" and ds.attrs["pixel_size_x"] == pytest.approx(1000.0)


def test_frame_filed_under_previous_days_folder_is_found(shared_data, tmp_path):
    report = ingest(shared_data / "radar/mch", "mch", tmp_path / "m.zarr",
                    start="2016-07-12T00:00", progress=False)
    assert report.written == 1


def test_window_and_coarsen(shared_data, tmp_path):
    full = tmp_path / "full.zarr"
    ingest(shared_data / "radar/fmi", "fmi", full, end="2016-09-28T14:45", progress=False)
    small = tmp_path / "small.zarr"
    ingest(shared_data / "radar/fmi", "fmi", small, end="2016-09-28T14:45",
           window="rows=100:300,cols=50:251", coarsen=4, progress=False)
    a, b = open_store(full), open_store(small)
    assert b.rain_rate.shape == (1, 50, 50)
    crop = a.rain_rate.values[0, 100:300, 50:250]
    np.testing.assert_allclose(b.rain_rate.values[0], block_mean(crop, 4), equal_nan=True)
    np.testing.assert_allclose(b.x.values[0], a.x.values[50:54].mean())
    assert b.attrs["pixel_size_x"] == pytest.approx(4 * a.attrs["pixel_size_x"])


def test_block_mean_ignores_nan_and_keeps_all_nan_blocks_nan():
    field = np.array([[1.0, np.nan, np.nan, np.nan], [3.0, 2.0, np.nan, np.nan]])
    np.testing.assert_allclose(block_mean(field, 2), [[2.0, np.nan]], equal_nan=True)


@pytest.fixture
def fmi_copy(shared_data, tmp_path):
    """Eight FMI frames copied into a scratch archive that tests may damage."""
    src = tmp_path / "archive"
    src.mkdir()
    for path in sorted((shared_data / "radar/fmi/pgm/20160928").glob("*.pgm.gz"))[:8]:
        shutil.copy(path, src / path.name)
    return src


def test_truncated_file_is_skipped_with_a_warning_naming_it(fmi_copy, tmp_path, workers):
    bad = sorted(fmi_copy.iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:500])
    warnings = []
    report = ingest(fmi_copy, "fmi", tmp_path / "s.zarr", progress=False,
                    warn=warnings.append, **workers)
    assert report.written == 7
    assert [p for p, _ in report.skipped] == [bad]
    assert len(warnings) == 1 and bad.name in warnings[0]
    ds = open_store(tmp_path / "s.zarr")
    assert len(ds.missing_times) == 1  # the bad frame's time is a recorded gap, not filled
    after = sorted(fmi_copy.iterdir())[4]  # the frame after the gap is the store's 4th
    assert ds.source_file.values[3] == str(after)
    rate, _ = _read_direct("fmi", str(after), {"gzipped": True})
    np.testing.assert_allclose(ds.rain_rate.isel(time=3).values, rate.astype(np.float32),
                               rtol=1e-6, equal_nan=True)


def test_strict_stops_at_a_bad_file_and_leaves_no_store(fmi_copy, tmp_path, workers):
    bad = sorted(fmi_copy.iterdir())[5]
    bad.write_bytes(b"not a pgm")
    with pytest.raises(IngestError, match=bad.name):
        ingest(fmi_copy, "fmi", tmp_path / "s.zarr", strict=True, progress=False, **workers)
    # Nothing but the writer lock file (kept: removing a flock file races with a new writer).
    assert [p.name for p in tmp_path.glob("*s.zarr*")] == [".s.zarr.lock"]


def test_time_off_the_step_is_skipped(fmi_copy, tmp_path):
    first = sorted(fmi_copy.iterdir())[0]
    off = fmi_copy / first.name.replace("201609281445", "201609281447")
    shutil.copy(first, off)
    warnings = []
    report = ingest(fmi_copy, "fmi", tmp_path / "s.zarr", progress=False, warn=warnings.append)
    assert report.written == 8
    assert report.skipped == [(off, "time 2016-09-28 14:47:00 falls between the 5-minute steps")]
    assert len(warnings) == 1 and str(off) in warnings[0]


def test_grid_that_differs_from_the_store_is_refused(fmi_copy, tmp_path, workers):
    out = tmp_path / "s.zarr"
    ingest(fmi_copy, "fmi", out, end="2016-09-28T15:00", window="rows=0:100,cols=0:100",
           progress=False, **workers)
    with pytest.raises(IngestError, match="grid or projection differs"):
        ingest(fmi_copy, "fmi", out, strict=True, progress=False, **workers)
    with pytest.raises(IngestError, match=r"none of the 4 frames was written \(4 x grid or "
                       r"projection differs .*\); the store holds fmi frames on a 100 x 100 px"):
        ingest(fmi_copy, "fmi", out, progress=False, **workers)
    assert open_store(out).sizes["time"] == 4


def test_rerun_adds_only_missing_times(fmi_copy, tmp_path, workers):
    out = tmp_path / "s.zarr"
    first = ingest(fmi_copy, "fmi", out, end="2016-09-28T15:00", progress=False, **workers)
    second = ingest(fmi_copy, "fmi", out, progress=False, **workers)
    third = ingest(fmi_copy, "fmi", out, progress=False, **workers)
    assert (first.written, second.written, second.already_present) == (4, 4, 4)
    assert (third.written, third.already_present) == (0, 8)
    assert open_store(out).sizes["time"] == 8


def test_unknown_source_and_empty_folder_are_named(tmp_path):
    with pytest.raises(UnknownSourceError, match="known sources: bom, fmi"):
        ingest(tmp_path, "nexrad", tmp_path / "s.zarr")
    with pytest.raises(IngestError, match="no file matches the knmi pattern"):
        ingest(tmp_path, "knmi", tmp_path / "s.zarr")
    with pytest.raises(IngestError, match="no such folder"):
        ingest(tmp_path / "absent", "knmi", tmp_path / "s.zarr")


def _committed_frames(path: Path) -> int:
    try:
        return zarr.open_group(path, mode="r", use_consolidated=True)["time"].shape[0]
    except Exception:
        return 0


def _ingest_process(src: Path, out: Path, workers: int) -> subprocess.Popen:
    """``metnet ingest`` of KNMI files in a process of its own (with ``--workers``: and the
    local cluster's worker processes it starts)."""
    command = [sys.executable, "-m", "metnet.cli", "ingest", str(src), "--source", "knmi",
               "--out", str(out), "--workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(process: subprocess.Popen, path: Path, frames: int, timeout: float = 120) -> None:
    """SIGKILL the ingest once ``path`` has ``frames`` committed; the worker processes it
    started must end with it."""
    import psutil

    deadline = time.monotonic() + timeout
    while _committed_frames(path) < frames and process.poll() is None:
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.02)
    children = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes outlived the killed ingest: {alive}"


def test_sigkill_during_a_new_store_leaves_no_store_and_rerun_completes(shared_data, tmp_path,
                                                                        workers):
    src, out = shared_data / "radar/KNMI", tmp_path / "k.zarr"
    process = _ingest_process(src, out, workers=2 if workers else 1)
    _kill_after(process, tmp_path / ".k.zarr.partial", 24)
    assert not out.exists()
    report = ingest(src, "knmi", out, progress=False, **workers)
    assert report.already_present >= 24
    ds = open_store(out)
    assert ds.sizes["time"] == 92
    reference = tmp_path / "ref.zarr"
    ingest(src, "knmi", reference, start="2010-08-26T07:00", progress=False)
    np.testing.assert_array_equal(
        ds.rain_rate.sel(time=slice("2010-08-26T07:00", None)).values,
        open_store(reference).rain_rate.values,
    )


def test_sigkill_while_extending_a_store_keeps_every_committed_frame(shared_data, tmp_path,
                                                                     workers):
    src, out = shared_data / "radar/KNMI", tmp_path / "k.zarr"
    ingest(src, "knmi", out, end="2010-08-26T00:35", progress=False, **workers)
    process = _ingest_process(src, out, workers=2 if workers else 1)
    _kill_after(process, out, 24)
    ds = xr.open_zarr(out)  # plain xarray opens it, with a complete prefix
    n = ds.sizes["time"]
    assert 24 <= n < 92
    assert np.isfinite(ds.rain_rate.isel(time=n - 1)).any()
    np.testing.assert_array_equal(
        ds.time.values, pd.date_range("2010-08-26T00:00", periods=n, freq="5min").values)
    ingest(src, "knmi", out, progress=False, **workers)
    assert open_store(out).sizes["time"] == 92


def test_a_second_writer_is_refused_naming_the_first(fmi_copy, tmp_path, workers):
    from metnet.io.ingest import writer_lock

    out = tmp_path / "s.zarr"
    with writer_lock(out), pytest.raises(IngestError, match=r"s.zarr: another ingest is "
                                         r"writing this store \(pid \d+ on .*, since "):
        ingest(fmi_copy, "fmi", out, progress=False, **workers)
    assert not out.exists()
    assert ingest(fmi_copy, "fmi", out, progress=False, **workers).written == 8


def test_frames_in_a_recorded_gap_are_skipped_and_later_frames_appended(fmi_copy, tmp_path,
                                                                         workers):
    out = tmp_path / "s.zarr"
    gap = sorted(fmi_copy.iterdir())[2]
    held = gap.rename(tmp_path / gap.name)
    ingest(fmi_copy, "fmi", out, end="2016-09-28T15:00", progress=False, **workers)
    held.rename(gap)
    warnings = []
    report = ingest(fmi_copy, "fmi", out, progress=False,
                    warn=warnings.append, **workers)
    assert report.written == 4 and [p for p, _ in report.skipped] == [gap]
    assert len(warnings) == 1 and "recorded gaps" in warnings[0] and str(gap) in warnings[0]
    assert open_store(out).sizes["time"] == 7


@pytest.mark.parametrize(("window", "coarsen", "message"), [
    ("rows=-10:-1,cols=0:10", 1, r"rows=-10:-1 is not a range within 0:1226 \(the grid has "
                                 r"1226 rows x 760 columns"),
    ("rows=0:10,cols=700:900", 1, r"cols=700:900 is not a range within 0:760"),
    ("x=0:1,y=0:1", 1, r"selects no pixel of the grid \(the grid has 1226 rows"),
    (None, 2000, r"--coarsen 2000 is larger than the grid \(1226 rows x 760 columns\)"),
])
def test_windows_and_coarsening_outside_the_grid_are_refused(fmi_copy, tmp_path, window,
                                                             coarsen, message, workers):
    with pytest.raises(IngestError, match=message):
        ingest(fmi_copy, "fmi", tmp_path / "s.zarr", window=window, coarsen=coarsen,
               progress=False, **workers)
    assert not (tmp_path / "s.zarr").exists()


def test_time_bounds_with_offsets_are_converted_to_utc(fmi_copy, tmp_path):
    report = ingest(fmi_copy, "fmi", tmp_path / "s.zarr", start="2016-09-28T16:55+02:00",
                    end="2016-09-28T15:05Z", window="rows=0:10,cols=0:10", progress=False)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").time.values,
                                  pd.date_range("2016-09-28T14:55", "2016-09-28T15:05",
                                                freq="5min").values)
    assert report.written == 3


def test_leftovers_of_a_killed_ingest_are_removed_by_the_next(fmi_copy, tmp_path):
    out = tmp_path / "s.zarr"
    leftovers = [tmp_path / ".s.1a2b3c4d.tmp.zarr", tmp_path / "..s.zarr.5e6f7a8b.tmp.partial"]
    for path in leftovers:
        (path / "rain_rate").mkdir(parents=True)
    (tmp_path / ".other.1a2b3c4d.tmp.zarr").mkdir()  # another store's: not ours to remove
    ingest(fmi_copy, "fmi", out, window="rows=0:10,cols=0:10", progress=False)
    assert not any(path.exists() for path in leftovers)
    assert (tmp_path / ".other.1a2b3c4d.tmp.zarr").exists()


def test_a_full_disk_is_named_by_the_store(fmi_copy, tmp_path, monkeypatch, workers):
    import metnet.io.ingest as ingest_module

    out = tmp_path / "s.zarr"
    ingest(fmi_copy, "fmi", out, end="2016-09-28T15:00", window="rows=0:10,cols=0:10",
           progress=False)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest_module, "append_frames", full)
    with pytest.raises(IngestError, match=r"s.zarr: cannot write \(No space left on device\); "
                       r"the 0 frames committed before are kept"):
        ingest(fmi_copy, "fmi", out, window="rows=0:10,cols=0:10", progress=False, **workers)
    assert open_store(out).sizes["time"] == 4


def test_two_workers_write_the_store_that_one_process_writes(shared_data, tmp_path):
    """``--workers 2`` (a local cluster started by the ingest): the same frames, in the same
    order, bit for bit, in a new store (its first batch) and in the batches appended to it."""
    src = shared_data / "radar/KNMI"
    serial, parallel = tmp_path / "serial.zarr", tmp_path / "parallel.zarr"
    ingest(src, "knmi", serial, end="2010-08-26T02:00", progress=False)
    report = ingest(src, "knmi", parallel, end="2010-08-26T02:00", workers=2, progress=False)
    assert report.written == 25
    a, b = open_store(serial), open_store(parallel)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.rain_rate.values, b.rain_rate.values)
    np.testing.assert_array_equal(a.source_file.values, b.source_file.values)
    np.testing.assert_array_equal(a.missing_times.values, b.missing_times.values)


def test_a_bad_scheduler_address_is_named_in_one_sentence(fmi_copy, tmp_path):
    import dask
    import distributed  # (also its configuration defaults, before they are overridden)

    for address in ("nonsense", "tcp://127.0.0.1:1"):
        sentence = (rf"^--scheduler {re.escape(address)}: no Dask scheduler answers at this "
                    r"address \([^\n]*\)$")
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(
                IngestError, match=sentence):
            ingest(fmi_copy, "fmi", tmp_path / "s.zarr", scheduler=address, progress=False)
    # the failed client does not stay Dask's scheduler: later computations run as before
    # (they used to wait for it, forever, until it was garbage-collected)
    assert dask.config.get("scheduler", None) is None
    with pytest.raises(ValueError, match="No clients found"):
        distributed.default_client()
    result = run_metnet("ingest", fmi_copy, "--source", "fmi", "--out", "s.zarr",
                        "--scheduler", "nonsense", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "metnet ingest: error: --scheduler nonsense: no Dask scheduler answers")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"workers": 0}, "--workers must be >= 1, got 0"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "not both"),
])
def test_workers_and_scheduler_are_checked(fmi_copy, tmp_path, options, message):
    with pytest.raises(IngestError, match=message):
        ingest(fmi_copy, "fmi", tmp_path / "s.zarr", progress=False, **options)
