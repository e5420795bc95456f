"""The store contract: validation, atomic creation, crash-safe appends."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from metnet.io.store import (
    STORE_VERSION,
    TIME_CHUNK,
    StoreError,
    append_frames,
    gaps,
    make_dataset,
    open_store,
    write_store,
)


def _frames(start: str, n: int, step: int = 5, value: float = 1.0) -> xr.Dataset:
    rain = np.full((n, 6, 8), value, dtype=np.float32)
    rain[:, 0, 0] = np.nan
    times = pd.date_range(start, periods=n, freq=f"{step}min")
    x = np.arange(8) * 1000.0 + 500
    y = 5500.0 - np.arange(6) * 1000.0
    return make_dataset(rain, times, x, y, crs="EPSG:3035", source="test", step_minutes=step)


def test_append_adds_frames_and_records_gaps(tmp_path):
    path = write_store(_frames("2020-01-01T00:00", 3), tmp_path / "s.zarr")
    append_frames(path, _frames("2020-01-01T00:30", 2, value=2.0))
    ds = open_store(path)
    assert ds.sizes["time"] == 5
    assert pd.Timestamp(ds.time.values[3]) == pd.Timestamp("2020-01-01T00:30")
    np.testing.assert_array_equal(ds.rain_rate.values[3:, 1, 1], [2.0, 2.0])
    np.testing.assert_array_equal(
        ds.missing_times.values, pd.date_range("2020-01-01T00:15", periods=3, freq="5min"))
    # plain xarray sees the same thing
    assert xr.open_zarr(path).sizes["time"] == 5


def test_append_interrupted_before_commit_leaves_store_as_it_was(tmp_path, monkeypatch):
    path = write_store(_frames("2020-01-01T00:00", 3), tmp_path / "s.zarr")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a SIGKILL just before the commit

    monkeypatch.setattr(zarr, "consolidate_metadata", killed)
    with pytest.raises(KeyboardInterrupt):
        append_frames(path, _frames("2020-01-01T00:15", 2))
    monkeypatch.undo()
    assert open_store(path).sizes["time"] == 3
    assert xr.open_zarr(path).sizes["time"] == 3
    append_frames(path, _frames("2020-01-01T00:15", 2))  # the rerun completes it
    assert open_store(path).sizes["time"] == 5


def test_write_store_refuses_existing_path_and_leaves_no_temporary(tmp_path):
    path = write_store(_frames("2020-01-01", 2), tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        write_store(_frames("2020-01-01", 2), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.assign_attrs(step_minutes=7), "off the 7-minute step"),
        (lambda ds: ds.drop_vars("rain_rate"), "missing variable"),
        (lambda ds: ds.assign(rain_rate=ds.rain_rate.astype("float64")), "float32"),
        (lambda ds: ds.isel(time=[1, 0]), "not strictly increasing"),
        (lambda ds: ds.assign_attrs(crs="not a crs"), "invalid crs"),
    ],
)
def test_open_store_rejects_broken_contract_in_one_line(tmp_path, mutate, message):
    ds = mutate(_frames("2020-01-01T00:05", 2))
    ds.to_zarr(tmp_path / "bad.zarr", zarr_format=3, consolidated=True)
    with pytest.raises(StoreError, match=message) as info:
        open_store(tmp_path / "bad.zarr")
    assert "bad.zarr" in str(info.value) and "\n" not in str(info.value)


def test_open_store_names_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "absent.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError, match="not a readable zarr store"):
        open_store(tmp_path / "junk.zarr")


def test_one_zstd_chunk_per_frame(tmp_path):
    rain = np.zeros((10, 600, 700), dtype=np.float32)
    ds = make_dataset(rain, pd.date_range("2020", periods=10, freq="5min"), np.arange(700.0),
                      -np.arange(600.0), crs="EPSG:3035", source="t", step_minutes=5)
    path = write_store(ds, tmp_path / "big.zarr")
    array = zarr.open_group(path, mode="r")["rain_rate"]
    assert array.chunks == (1, 600, 700)
    assert [type(c).__name__ for c in array.compressors] == ["ZstdCodec"]


def _version_1(ds: xr.Dataset) -> xr.Dataset:
    """A store as metnet wrote them before format version 2."""
    old = ds.drop_vars(["crs", "missing_times", "lat", "lon", "source_file"]).rename(
        rain_rate="precip_rate")
    old.precip_rate.attrs.update(units="mm/h", standard_name="rainfall_rate")
    old.attrs = {k: v for k, v in ds.attrs.items()
                 if k not in ("metnet_store_version", "consistent_timestep_start")}
    old.attrs["time_gaps"] = []
    return old


def _files(start: int, n: int) -> list[str]:
    return [f"/archive/{i:05d}.h5" for i in range(start, start + n)]


def test_appends_keep_the_metadata_and_the_time_chunks_the_same_size(tmp_path):
    """A year of commits must not rewrite a year of file names each time, nor leave one
    time object per commit for every open to read."""
    first = _frames("2020-01-01T00:00", 3).assign_coords(
        source_file=("time", np.array(_files(0, 3), dtype=object)))
    path = write_store(first, tmp_path / "s.zarr")
    sizes = []
    for k in range(3):
        new = _frames(str(pd.Timestamp("2020-01-01T00:15") + pd.Timedelta(minutes=10 * k)), 2)
        append_frames(path, new.assign_coords(source_file=("time", np.array(_files(3 + 2 * k, 2),
                                                                         dtype=object))))
        sizes.append((path / "zarr.json").stat().st_size)
    assert len(set(sizes)) == 1
    ds = open_store(path)
    assert ds.source_file.values.tolist() == _files(0, 9)
    group = zarr.open_group(path, mode="r")
    assert group["time"].chunks == group["source_file"].chunks == (TIME_CHUNK,)
    assert "source_files" not in ds.attrs


def test_frames_without_file_names_get_empty_ones(tmp_path):
    path = write_store(_frames("2020-01-01T00:00", 2).assign_coords(
        source_file=("time", np.array(_files(0, 2), dtype=object))), tmp_path / "s.zarr")
    append_frames(path, _frames("2020-01-01T00:10", 2).drop_vars("source_file"))
    assert open_store(path).source_file.values.tolist() == [*_files(0, 2), "", ""]
    with pytest.raises(ValueError, match="3 source files for 2 frames"):
        make_dataset(np.zeros((2, 2, 2)), pd.date_range("2020-01-01", periods=2, freq="5min"),
                     np.arange(2.0), np.arange(2.0), crs="EPSG:3035", source="test",
                     step_minutes=5, source_files=np.array(_files(0, 3)))


def test_version_2_stores_keep_their_file_names_in_an_attribute(tmp_path):
    old = _frames("2020-01-01T00:00", 3).drop_vars("source_file").assign_attrs(
        metnet_store_version=2, source_files=_files(0, 3))
    minutes = {"units": "minutes since 1970-01-01 00:00:00", "dtype": "int64"}
    old.to_zarr(tmp_path / "v2.zarr", zarr_format=3, consolidated=True,
                encoding={"time": minutes, "missing_times": minutes})
    append_frames(tmp_path / "v2.zarr", _frames("2020-01-01T00:15", 2).assign_coords(
        source_file=("time", np.array(_files(3, 2), dtype=object))))
    ds = open_store(tmp_path / "v2.zarr")
    assert ds.sizes["time"] == 5 and ds.attrs["source_files"] == _files(0, 5)


def test_version_1_stores_are_read_and_appended_to(tmp_path):
    path = tmp_path / "old.zarr"
    _version_1(_frames("2020-01-01T00:00", 3)).to_zarr(
        path, zarr_format=3, consolidated=True,
        encoding={"time": {"units": "minutes since 1970-01-01 00:00:00", "dtype": "int64"}})
    append_frames(path, _frames("2020-01-01T00:25", 2, value=2.0))
    ds = open_store(path)
    assert ds.sizes["time"] == 5 and ds.attrs["time_gaps"] == [
        ["2020-01-01T00:15:00", "2020-01-01T00:20:00"]]
    np.testing.assert_array_equal(ds.rain_rate.values[3:, 1, 1], [2.0, 2.0])
    np.testing.assert_array_equal(gaps(ds), pd.date_range("2020-01-01T00:15", periods=2,
                                                          freq="5min"))


def test_a_store_of_a_newer_format_is_refused(tmp_path):
    ds = _frames("2020-01-01", 2).assign_attrs(metnet_store_version=STORE_VERSION + 1)
    ds.to_zarr(tmp_path / "new.zarr", zarr_format=3, consolidated=True)
    with pytest.raises(StoreError, match=f"format version {STORE_VERSION + 1} is newer than "
                                         "this metnet reads"):
        open_store(tmp_path / "new.zarr")
