"""Any archive in: sources from presets, source files and the command line; ODIM times from
the files; CF datasets through xarray; steps inferred; time problems warned about once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
import yaml

from metnet.io.ingest import IngestError, infer_step, ingest
from metnet.io.sources import (
    PRESETS,
    SourceError,
    get_source,
    importer_names,
    parse_importer_args,
    resolve_source,
)
from metnet.io.store import open_store
from tests.conftest import run_metnet

OPERA_WINDOW = "rows=800:900,cols=900:1000"


@pytest.fixture
def odim_renamed(shared_data: Path, tmp_path: Path) -> Path:
    """Four OPERA ODIM files under names that carry no time (numbered backwards)."""
    src = tmp_path / "odim"
    src.mkdir()
    files = sorted((shared_data / "radar/OPERA/20180824").glob("*.hdf"))[:4]
    for number, path in enumerate(reversed(files)):
        shutil.copy(path, src / f"composite_rate_{number}.h5")
    return src


def test_every_preset_is_a_source_file_and_every_importer_is_known() -> None:
    assert {"odim_hdf5", "mch_hdf5", "fmi_geotiff", "xarray"} <= set(importer_names())
    for name, settings in PRESETS.items():
        source = get_source(name)
        assert source.settings() == {"name": name, "importer_args": {}, "license": None,
                                     "identifier": None, **settings}


def test_odim_files_under_any_name_are_timed_by_their_metadata(
    shared_data: Path, odim_renamed: Path, tmp_path: Path
) -> None:
    notes: list[str] = []
    source = resolve_source(importer="odim_hdf5", pattern="composite_rate_*.h5",
                            importer_args={"qty": "RATE"})
    report = ingest(odim_renamed, source, tmp_path / "renamed.zarr", window=OPERA_WINDOW,
                    progress=False, note=notes.append)
    preset = ingest(shared_data / "radar/OPERA", "opera", tmp_path / "preset.zarr",
                    end="2018-08-24T18:45", window=OPERA_WINDOW, progress=False)
    renamed, named = open_store(tmp_path / "renamed.zarr"), open_store(tmp_path / "preset.zarr")
    assert report.written == preset.written == 4 and not report.skipped
    assert report.step_minutes == 15 and notes[0] == (
        "step 15 min: the most common spacing of the 4 frames' times")
    assert "no license given" in notes[1]
    np.testing.assert_array_equal(renamed.time.values, named.time.values)
    np.testing.assert_array_equal(renamed.rain_rate.values, named.rain_rate.values)


def test_the_same_time_in_two_files_is_one_warning_naming_both(
    odim_renamed: Path, tmp_path: Path
) -> None:
    first = odim_renamed / "composite_rate_0.h5"
    copy = odim_renamed / "composite_rate_9.h5"
    shutil.copy(first, copy)
    warnings: list[str] = []
    source = resolve_source(importer="odim_hdf5", pattern="*.h5")
    report = ingest(odim_renamed, source, tmp_path / "s.zarr", window=OPERA_WINDOW,
                    progress=False, warn=warnings.append)
    assert report.written == 4
    assert [path for path, _ in report.skipped] == [copy]
    assert len(warnings) == 1 and str(copy) in warnings[0] and str(first) in warnings[0]


@pytest.fixture
def fmi_mixed_spacing(shared_data: Path, tmp_path: Path) -> Path:
    """FMI frames every 5 min from 14:45 to 15:30, then every 10 min to 16:30."""
    src = tmp_path / "fmi"
    src.mkdir()
    times = [*pd.date_range("2016-09-28T14:45", "2016-09-28T15:30", freq="5min"),
             *pd.date_range("2016-09-28T15:40", "2016-09-28T16:30", freq="10min")]
    for t in times:
        name = f"{t:%Y%m%d%H%M}_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
        shutil.copy(shared_data / "radar/fmi/pgm" / f"{t:%Y%m%d}" / name, src / name)
    return src


def test_step_is_inferred_and_a_change_of_spacing_is_warned_about(
    fmi_mixed_spacing: Path, tmp_path: Path
) -> None:
    warnings: list[str] = []
    source = resolve_source(importer="fmi_pgm", importer_args={"gzipped": True},
                            pattern="%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz")
    report = ingest(fmi_mixed_spacing, source, tmp_path / "s.zarr", window="rows=0:50,cols=0:50",
                    progress=False, warn=warnings.append)
    store = open_store(tmp_path / "s.zarr")
    assert report.step_minutes == store.attrs["step_minutes"] == 5 and report.written == 16
    assert warnings == [
        "the files' spacing changes within the archive: every 5 min from 2016-09-28 14:45 to "
        "2016-09-28 15:30, every 10 min from 2016-09-28 15:30 to 2016-09-28 16:30; the store "
        "keeps a 5-minute step, and steps without a frame are recorded as missing"]
    assert len(store.missing_times) == 6


def test_infer_step_takes_the_most_common_spacing() -> None:
    times = pd.date_range("2024-01-01", periods=10, freq="5min").delete([3, 4, 7])
    assert infer_step(list(times)) == 5
    assert infer_step([times[0], times[0]]) is None


def test_source_file_settings_and_overrides(shared_data: Path, tmp_path: Path) -> None:
    file = tmp_path / "nl.yaml"
    file.write_text(yaml.safe_dump({
        "importer": "knmi_hdf5", "pattern": "RAD_NL25_RAP_5min_%Y%m%d%H%M.h5",
        "description": "KNMI, as a user's source file"}))
    source = resolve_source(source_file=file, step_minutes=10)
    assert (source.name, source.importer, source.step_minutes) == ("nl", "knmi_hdf5", 10)
    report = ingest(shared_data / "radar/KNMI", resolve_source(source_file=file),
                    tmp_path / "nl.zarr", start="2010-08-26T03:00", end="2010-08-26T03:10",
                    progress=False)
    preset = ingest(shared_data / "radar/KNMI", "knmi", tmp_path / "knmi.zarr",
                    start="2010-08-26T03:00", end="2010-08-26T03:10", progress=False)
    assert report.written == preset.written == 3
    np.testing.assert_array_equal(open_store(tmp_path / "nl.zarr").rain_rate.values,
                                  open_store(tmp_path / "knmi.zarr").rain_rate.values)


@pytest.mark.parametrize(("settings", "message"), [
    ({"importer": "knmi_hdf5", "patern": "x"}, "unknown setting.s. patern"),
    ({"importer": "nexrad_l2"}, "unknown importer 'nexrad_l2'; known: bom_rf3"),
    ({"importer": "fmi_pgm", "pattern": "*.pgm"}, "has no time code"),
    ({"importer": "odim_hdf5", "step_minutes": 0}, "positive whole number"),
    ({"importer": "xarray", "pattern": "*.nc"}, "needs the variable"),
    ({"importer": "odim_hdf5", "importer_args": ["qty"]}, "must be a mapping"),
])
def test_bad_source_files_are_named_in_one_line(
    tmp_path: Path, settings: dict, message: str
) -> None:
    file = tmp_path / "radar.yaml"
    file.write_text(yaml.safe_dump(settings))
    with pytest.raises(SourceError, match=message):
        resolve_source(source_file=file)


def test_importer_arguments_are_yaml_scalars() -> None:
    assert parse_importer_args(["qty=RATE", "gzipped=true", "accutime=5", "x=1.5"]) == {
        "qty": "RATE", "gzipped": True, "accutime": 5, "x": 1.5}
    with pytest.raises(SourceError, match="not KEY=VALUE"):
        parse_importer_args(["qty"])


def test_bom_netcdf_read_by_xarray_equals_the_pysteps_importer(
    shared_data: Path, tmp_path: Path
) -> None:
    """The Rainfields files are CF netCDF: read as a plain xarray source (depth in kg m-2
    over the inferred 6-minute step, the albers grid mapping), the rates and times equal the
    bom importer's. The grids differ by half a pixel: BOM's coordinates are cell corners,
    which pysteps' importer knows and CF (cell centres) does not say.
    """
    source = resolve_source(importer="xarray", pattern="*.prcp-cscn.nc",
                            importer_args={"variable": "precipitation"})
    period = {"start": "2018-06-16T12:00", "end": "2018-06-16T12:30"}
    ingest(shared_data / "radar/bom", source, tmp_path / "cf.zarr", progress=False, **period)
    ingest(shared_data / "radar/bom", "bom", tmp_path / "bom.zarr", progress=False, **period)
    cf, bom = open_store(tmp_path / "cf.zarr"), open_store(tmp_path / "bom.zarr")
    assert cf.attrs["step_minutes"] == 6 and cf.sizes["time"] == 6
    np.testing.assert_array_equal(cf.time.values, bom.time.values)
    np.testing.assert_allclose(cf.rain_rate.values, bom.rain_rate.values, equal_nan=True)
    np.testing.assert_allclose(cf.x.values - bom.x.values, -250.0)
    # The file's grid mapping gives GRS80, pysteps' PROJ string WGS84: the same to 1 mm here.
    corner = [(float(cf.x[0]), float(cf.y[0]))]
    lonlat = [pyproj.Transformer.from_crs(store.attrs["crs"], "EPSG:4326", always_xy=True)
              .transform(*corner[0]) for store in (cf, bom)]
    np.testing.assert_allclose(lonlat[0], lonlat[1], atol=1e-8)


def _cf_reflectivity(path: Path, times: pd.DatetimeIndex, seed: int = 0) -> xr.DataArray:
    """A CF netCDF of dBZ on a 1 km LAEA grid in km, several frames per file."""
    rng = np.random.default_rng(seed)
    dbz = rng.uniform(-10, 55, (len(times), 20, 30)).astype("float32")
    dbz[:, 0, 0] = np.nan
    ds = xr.Dataset(
        {"DBZH": (("time", "y", "x"), dbz, {"units": "dBZ", "grid_mapping": "laea"}),
         "laea": ((), 0, pyproj.CRS("EPSG:3035").to_cf())},
        coords={"time": times, "y": ("y", np.arange(20.0)[::-1] + 3000.5, {"units": "km"}),
                "x": ("x", np.arange(30.0) + 4000.5, {"units": "km"})})
    ds.to_netcdf(path)
    return ds["DBZH"]


def test_cf_reflectivity_files_of_many_frames(tmp_path: Path) -> None:
    src = tmp_path / "cf"
    src.mkdir()
    first = _cf_reflectivity(src / "day1.nc", pd.date_range("2024-06-01T12:00", periods=3,
                                                            freq="10min"))
    _cf_reflectivity(src / "day2.nc", pd.date_range("2024-06-01T12:30", periods=2,
                                                    freq="10min"), seed=1)
    source = resolve_source(importer="xarray", pattern="*.nc",
                            importer_args={"variable": "DBZH", "zr_a": 300, "zr_b": 1.5})
    report = ingest(src, source, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert report.written == 5 and store.attrs["step_minutes"] == 10
    expected = (10 ** (first.values[1] / 10) / 300) ** (1 / 1.5)
    np.testing.assert_allclose(store.rain_rate.values[1], expected, rtol=1e-5,
                               equal_nan=True)
    np.testing.assert_allclose(store.x.values[:2], [4000500.0, 4001500.0])
    projection = pyproj.CRS(store.attrs["crs"]).to_dict()
    assert {k: projection[k] for k in ("proj", "lat_0", "lon_0", "x_0", "y_0", "ellps")} == {
        "proj": "laea", "lat_0": 52, "lon_0": 10, "x_0": 4321000, "y_0": 3210000,
        "ellps": "GRS80"}
    assert store.sizes["time"] == 5


def test_cf_file_in_unknown_units_is_named(tmp_path: Path) -> None:
    src = tmp_path / "cf"
    src.mkdir()
    path = src / "a.nc"
    da = _cf_reflectivity(path, pd.date_range("2024-06-01", periods=2, freq="5min"))
    da.attrs["units"] = "furlongs"
    da.to_dataset().assign(laea=((), 0, pyproj.CRS("EPSG:3035").to_cf())).to_netcdf(
        src / "b.nc")
    path.unlink()
    source = resolve_source(importer="xarray", pattern="*.nc",
                            importer_args={"variable": "DBZH"}, step_minutes=5)
    with pytest.raises(IngestError, match=r"b.nc: 'DBZH' has units 'furlongs'; known units"):
        ingest(src, source, tmp_path / "s.zarr", progress=False, strict=True)


def test_ingest_command_with_an_importer_and_pattern(odim_renamed: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    result = run_metnet("ingest", odim_renamed, "--importer", "odim_hdf5", "--pattern", "*.h5",
                        "--importer_arg", "qty=RATE", "--window", OPERA_WINDOW, "--out", out,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: step 15 min" in result.stderr
    assert f"{out}: 4 frames written" in result.stdout
    bad = run_metnet("ingest", odim_renamed, "--importer", "fmi_pgm", "--out", out, cwd=tmp_path)
    assert bad.returncode != 0 and "has no time code" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
