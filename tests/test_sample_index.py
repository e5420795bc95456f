"""The sample index: the rain statistics of patch sampling, computed once per store and
setting, extended as ingest appends frames, and giving exactly what a full read of the
store gave."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import torch
import xarray as xr
import zarr
from filelock import FileLock
from test_remote import served  # noqa: F401 (a fixture: an HTTP server on 127.0.0.1)

from metnet.data.datamodule import NowcastDataModule
from metnet.data.frames import StoreFrames
from metnet.data.patches import PatchWeights
from metnet.io import sample_index
from metnet.io.ingest import ingest
from metnet.io.sample_index import PatchLattice, sample_fractions
from metnet.io.sources import Source, resolve_source
from metnet.io.store import append_frames, cache_folder, open_store, write_store
from metnet.io.synthetic import synthesize

SETTINGS = dict(context_frames=3, context_size=48, target_size=16, lead_times=[5, 15],
                batch_size=4, patch_stride=5, seed=7)
MAX_RATE = 60.0


def _store(path: Path, frames: int = 40, seed: int = 3) -> Path:
    """A synthetic store of 96 x 112 px with the cases cleaning decides: negative rates
    (dry, observed), rates above :data:`MAX_RATE` (not observed) and a missing frame."""
    ds = synthesize(frames=frames + 1, height=96, width=112, seed=seed)
    rate = ds["rain_rate"].values
    rate[::3, 10:30, 20:50] = -0.5
    rate[1::4, 50:70, 40:90] = MAX_RATE + 5.0
    return write_store(ds.drop_isel(time=frames // 2), path)


def _reference(frames: StoreFrames, lattice: PatchLattice, threshold: float):
    """(wet, cover) as a full read of the store computes them: every candidate's target
    square of every cleaned frame counted pixel by pixel (float16, as the sampler holds
    them)."""
    rate = frames.read(np.arange(len(frames.times)), slice(None), slice(None))
    offset, size = (lattice.context_size - lattice.target_size) // 2, lattice.target_size
    wet = np.empty((len(rate), len(lattice)), np.float16)
    cover = np.empty_like(wet)
    for k, (row, col) in enumerate((r, c) for r in lattice.rows for c in lattice.cols):
        box = rate[:, row + offset:row + offset + size, col + offset:col + offset + size]
        with np.errstate(invalid="ignore"):
            wet[:, k] = (box > threshold).sum(axis=(1, 2)) / float(size * size)
        cover[:, k] = (~np.isnan(box)).sum(axis=(1, 2)) / float(size * size)
    return wet, cover


def _index_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sample-index-*.zarr"))


@pytest.mark.parametrize("cache", ["memory", "lazy"])
def test_the_index_gives_the_statistics_and_draws_of_a_full_read(tmp_path, cache, capsys):
    store = _store(tmp_path / "s.zarr", frames=60)
    settings = {**SETTINGS, "lead_times": [10, 20], "step_minutes": 10, "cache": cache,
                "max_rate": MAX_RATE, "split_fractions": (0.5, 0.5, 0.0)}
    dm = NowcastDataModule([str(store)], **settings)
    dm.setup("fit")
    assert "no sample index for context 48 px" in capsys.readouterr().err
    domain = dm.datasets["train"].domains[0]
    assert len(domain.frames.index) == 30  # the 10-minute grid keeps every other frame
    lattice = PatchLattice(96, 112, 48, 16, 5)
    wet, cover = _reference(domain.frames, lattice, 0.2)
    assert (wet > 0).any() and (cover < 1).any() and (cover > 0).any()
    np.testing.assert_array_equal(domain.patches.wet, wet)
    np.testing.assert_array_equal(domain.patches.cover, cover)

    reference = PatchWeights(lattice, wet, cover)
    rngs = np.random.default_rng(0), np.random.default_rng(0)
    for window in dm.datasets["train"].windows[0].target:
        np.testing.assert_array_equal(domain.patches.weights(window, 0.1),
                                      reference.weights(window, 0.1))
        assert domain.patches.draw(window, 0.1, rngs[0]) == reference.draw(window, 0.1, rngs[1])

    # a second setup reads the index: the same batches, and no note
    again = NowcastDataModule([str(store)], **settings)
    again.setup("fit")
    assert "sample index" not in capsys.readouterr().err
    for split in ("train", "val"):
        first, second = (next(iter(m.dataloader(split))) for m in (dm, again))
        for key, value in first.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(second[key], value, equal_nan=True, rtol=0, atol=0)


def test_the_index_states_its_settings_and_each_setting_has_its_own(tmp_path, capsys):
    store = _store(tmp_path / "s.zarr")
    NowcastDataModule([str(store)], **SETTINGS).setup("fit")
    NowcastDataModule([str(store)], **{**SETTINGS, "patch_stride": 8}).setup("fit")
    NowcastDataModule([str(store)], **{**SETTINGS, "rain_threshold": 1.0}).setup("fit")
    assert capsys.readouterr().err.count("no sample index") == 3
    files = _index_files(tmp_path / ".metnet-cache")
    assert len(files) == 3
    attrs = [zarr.open_group(f, mode="r").attrs for f in files]
    assert sorted((a["lattice"]["stride"], a["threshold_mm_h"]) for a in attrs) == [
        (5, 0.2), (5, 1.0), (8, 0.2)]
    for a in attrs:
        assert a["frames"] == 40 and a["store"] == str(store.resolve())
        assert (a["lattice"]["context_size"], a["lattice"]["target_size"]) == (48, 16)
        assert a["lattice"]["rows"] == list(range(0, 96 - 48 + 1, a["lattice"]["stride"]))


def test_a_stale_index_is_extended_and_a_rewritten_store_rebuilds_it(tmp_path, monkeypatch,
                                                                     capsys):
    store = _store(tmp_path / "s.zarr", frames=30)
    full = synthesize(frames=45, height=96, width=112, seed=3)
    lattice = PatchLattice(96, 112, 48, 16, 5)
    sample_fractions(store, lattice, 0.2, 200.0, progress=False)
    append_frames(store, full.isel(time=slice(31, 45)))
    read = _record_reads(monkeypatch)
    wet, cover = sample_fractions(store, lattice, 0.2, 200.0, note=print, progress=False)
    assert "extending the sample index" in capsys.readouterr().out
    assert min(first for first, _ in read) == 30 and len(wet) == 44
    expected = _reference(StoreFrames(store, cache="lazy"), lattice, 0.2)
    np.testing.assert_array_equal(wet, expected[0])
    np.testing.assert_array_equal(cover, expected[1])

    # a store rewritten at the same path (same times, other rain) is read again in full; it
    # is told apart by its creation time, which has whole seconds (mlcast_created_on)
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    shutil.rmtree(store)
    _store(store, frames=30, seed=9)
    read.clear()
    wet, _ = sample_fractions(store, lattice, 0.2, 200.0, note=print, progress=False)
    assert "no sample index" in capsys.readouterr().out and min(read)[0] == 0
    np.testing.assert_array_equal(wet, _reference(StoreFrames(store, cache="lazy"),
                                                  lattice, 0.2)[0])
    assert len(_index_files(tmp_path / ".metnet-cache")) == 1


def test_a_killed_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.zarr", frames=30)
    lattice = PatchLattice(96, 112, 48, 16, 5)
    monkeypatch.setattr(sample_index, "MAX_CHUNK_FRAMES", 8)
    monkeypatch.setattr(sample_index, "READ_FRAMES", 4)
    original = sample_index._StoreView.read

    def dies_at_frame_20(self, first, last):
        if last > 20:
            raise KeyboardInterrupt
        return original(self, first, last)

    monkeypatch.setattr(sample_index._StoreView, "read", dies_at_frame_20)
    with pytest.raises(KeyboardInterrupt):
        sample_fractions(store, lattice, 0.2, 200.0, progress=False)
    monkeypatch.setattr(sample_index._StoreView, "read", original)
    read = _record_reads(monkeypatch)
    wet, cover = sample_fractions(store, lattice, 0.2, 200.0, progress=False)
    assert min(read)[0] == 16  # the two committed chunks of 8 frames are kept
    expected = _reference(StoreFrames(store, cache="lazy"), lattice, 0.2)
    np.testing.assert_array_equal(wet, expected[0])
    np.testing.assert_array_equal(cover, expected[1])


def _ingest_cf(tmp_path: Path, times: pd.DatetimeIndex) -> tuple[Path, Path, Source]:
    """``metnet ingest`` of a CF file ``cf/a.nc`` at ``times`` into ``s.zarr``: (the source
    folder, the store, the source), so that a test can add ``cf/b.nc`` and ingest again."""
    src, out = tmp_path / "cf", tmp_path / "s.zarr"
    src.mkdir()
    _cf_rate(src / "a.nc", times, seed=0)
    source = resolve_source(importer="xarray", pattern="*.nc", importer_args={"variable": "RR"})
    ingest(src, source, out, progress=False)
    return src, out, source


def test_ingest_extends_the_index_reading_only_the_new_frames(tmp_path, monkeypatch):
    times = pd.date_range("2024-06-01T12:00", periods=14, freq="10min")
    src, out, source = _ingest_cf(tmp_path, times[:8])
    lattice = PatchLattice(40, 48, 24, 8, 4)
    sample_fractions(out, lattice, 0.5, 200.0, progress=False)
    (index,) = _index_files(tmp_path / ".metnet-cache")
    assert zarr.open_group(index, mode="r").attrs["frames"] == 8

    _cf_rate(src / "b.nc", times[8:], seed=1)
    read = _record_reads(monkeypatch)
    notes: list[str] = []
    report = ingest(src, source, out, progress=False, note=notes.append)
    assert report.written == 6 and min(read)[0] == 8 and sum(b - a for a, b in read) == 6
    assert any("extending the sample index" in n for n in notes)
    assert zarr.open_group(index, mode="r").attrs["frames"] == 14
    read.clear()
    wet, cover = sample_fractions(out, lattice, 0.5, 200.0, progress=False)
    assert not read  # current: nothing to read
    expected = _reference(StoreFrames(out, cache="lazy"), lattice, 0.5)
    np.testing.assert_array_equal(wet, expected[0])
    np.testing.assert_array_equal(cover, expected[1])


def test_an_index_ingest_extended_past_the_store_a_setup_saw_is_kept(tmp_path, monkeypatch,
                                                                    capsys):
    """A setup that read the store's times just before ingest appended and extended the
    index finds an index with more frames than it knows: current, not rebuilt."""
    store = _store(tmp_path / "s.zarr", frames=30)
    lattice = PatchLattice(96, 112, 48, 16, 5)
    before, _ = sample_fractions(store, lattice, 0.2, 200.0, progress=False)
    append_frames(store, synthesize(frames=45, height=96, width=112, seed=3).isel(
        time=slice(31, 45)))
    sample_index.extend_sample_indexes(store, progress=False)
    opened = sample_index._StoreView.__init__

    def as_before_the_append(self, *args, **kwargs) -> None:
        opened(self, *args, **kwargs)
        self.times = self.times[:len(before)]

    monkeypatch.setattr(sample_index._StoreView, "__init__", as_before_the_append)
    read = _record_reads(monkeypatch)
    wet, _ = sample_fractions(store, lattice, 0.2, 200.0, note=print, progress=False)
    assert not read and "no sample index" not in capsys.readouterr().out
    np.testing.assert_array_equal(wet, before)
    (index,) = _index_files(tmp_path / ".metnet-cache")
    assert zarr.open_group(index, mode="r").attrs["frames"] == 44


def test_ingest_does_not_wait_for_an_index_a_setup_is_building(tmp_path):
    times = pd.date_range("2024-06-01T12:00", periods=10, freq="10min")
    src, out, source = _ingest_cf(tmp_path, times[:6])
    sample_fractions(out, PatchLattice(40, 48, 24, 8, 4), 0.5, 200.0, progress=False)
    (index,) = _index_files(tmp_path / ".metnet-cache")
    _cf_rate(src / "b.nc", times[6:], seed=1)
    notes: list[str] = []
    with FileLock(index.with_name(f".{index.name}.lock")):  # a setup building the index
        ingesting = threading.Thread(target=ingest, args=(src, source, out),
                                     kwargs={"progress": False, "note": notes.append}, daemon=True)
        ingesting.start()
        ingesting.join(timeout=30)
        assert not ingesting.is_alive(), "ingest waited for the sample index lock"
    assert len(open_store(out)["time"]) == 10
    assert zarr.open_group(index, mode="r").attrs["frames"] == 6
    (note,) = [n for n in notes if "sample index" in n]
    assert "in use" in note and "the next setup extends it" in note and "\n" not in note


def test_a_remote_store_keeps_its_index_in_the_cache_folder(served, tmp_path,  # noqa: F811
                                                           monkeypatch, capsys):
    root, base = served
    store = _store(root / "remote.zarr")
    url = f"{base}/remote.zarr"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = NowcastDataModule([url], cache="lazy", **SETTINGS)
    remote.setup("fit")
    (index,) = _index_files(cache_folder(url))
    assert index.is_relative_to(tmp_path / "xdg" / "metnet")
    assert zarr.open_group(index, mode="r").attrs["store"] == url
    assert "no sample index" in capsys.readouterr().err
    told = NowcastDataModule([url], cache="lazy", cache_dir=str(tmp_path / "mine"), **SETTINGS)
    told.setup("fit")
    assert _index_files(cache_folder(url, tmp_path / "mine"))
    assert not (root / ".metnet-cache").exists()  # nothing beside the served store

    local = NowcastDataModule([str(store)], cache="lazy", **SETTINGS)
    local.setup("fit")
    for module in (remote, told):
        np.testing.assert_array_equal(module.datasets["train"].domains[0].patches.wet,
                                      local.datasets["train"].domains[0].patches.wet)


def test_without_a_writable_cache_folder_the_index_lives_for_the_run(tmp_path, capsys):
    store = _store(tmp_path / "s.zarr")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dm = NowcastDataModule([str(store)], cache_dir=str(blocker / "cache"), **SETTINGS)
    dm.setup("fit")
    err = capsys.readouterr().err
    assert "no writable cache folder" in err and "computed for this run only" in err
    lattice = PatchLattice(96, 112, 48, 16, 5)
    np.testing.assert_array_equal(dm.datasets["train"].domains[0].patches.wet,
                                  _reference(dm.datasets["train"].domains[0].frames,
                                             lattice, 0.2)[0])


def _record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The ``(first, last)`` frame ranges the index reads from stores from now on."""
    read: list[tuple[int, int]] = []
    original = sample_index._StoreView.read

    def recording(self, first: int, last: int) -> np.ndarray:
        read.append((first, last))
        return original(self, first, last)

    monkeypatch.setattr(sample_index._StoreView, "read", recording)
    return read


def _cf_rate(path: Path, times: pd.DatetimeIndex, seed: int) -> None:
    """A CF netCDF of rain rate (mm/h) on a 1 km LAEA grid of 40 x 48 px, some of it not
    observed."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(-1.0, 1.5, (len(times), 40, 48))).astype("float32")
    rate[:, :6, :10] = np.nan
    xr.Dataset(
        {"RR": (("time", "y", "x"), rate, {"units": "mm/h", "grid_mapping": "laea"}),
         "laea": ((), 0, pyproj.CRS("EPSG:3035").to_cf())},
        coords={"time": times, "y": ("y", np.arange(40.0)[::-1] * 1000 + 3e6, {"units": "m"}),
                "x": ("x", np.arange(48.0) * 1000 + 4e6, {"units": "m"})},
    ).to_netcdf(path)

