"""Stores follow the MLCast source-data specification for radar precipitation: the
community's validator (``mlcast-dataset-validator``) finds no fault that a store of a short
sample could avoid, and rioxarray finds the projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from metnet.io.ingest import ingest
from metnet.io.sources import resolve_source
from metnet.io.store import append_frames, write_store
from metnet.io.synthetic import synthesize

validator = pytest.importorskip(
    "mlcast_dataset_validator.specs.source_data.radar_precipitation",
    reason="the MLCast validator is a dev dependency (pip install -e .[dev])")
rioxarray = pytest.importorskip("rioxarray", reason="rioxarray is a dev dependency")

#: Failures a store of pysteps' example data cannot avoid: hours of data, not three years;
#: the software URL must name the publisher's mlcast-community repository.
BY_NATURE = {"Minimum 3-year coverage", "Global attribute 'mlcast_created_with'"}
#: What the source adds to that: MeteoSwiss' oblique Mercator has a rectified grid angle
#: that CF's oblique_mercator cannot state (the WKT does); OPERA (2 km) and SAF (3 km) are
#: coarser than 1 km; MRMS is a longitude/latitude grid, whose x/y the specification wants
#: projected.
SOURCE_NATURE = {
    "mch": {"Georeferencing consistency for rain_rate"},
    "mrms": {"CF attributes of coordinate 'x'", "CF attributes of coordinate 'y'"},
    "saf-crr": {"Spatial resolution ≤1km"},
    "opera": {"Spatial resolution ≤1km"},
}
CASES = {
    "knmi": ("radar/KNMI", "2010-08-26T03:00", "2010-08-26T03:10"),
    "fmi": ("radar/fmi", "2016-09-28T16:00", "2016-09-28T16:10"),
    "mch": ("radar/mch", "2016-07-11T23:50", "2016-07-12T00:00"),
    "bom": ("radar/bom", "2018-06-16T12:00", "2018-06-16T12:12"),
    "opera": ("radar/OPERA", "2018-08-24T18:00", "2018-08-24T18:30"),
    "mrms": ("mrms", "2019-06-10T00:00", "2019-06-10T00:04"),
    "saf-crr": ("saf", "2018-06-01T12:00", "2018-06-01T12:30"),
}


def failures(path: Path) -> set[str]:
    """The requirements the validator fails on the store (it runs offline: the GitHub
    check of ``mlcast_created_with`` only runs when that attribute is present)."""
    report, _ = validator.validate_dataset(ds=xr.open_zarr(path))
    assert report.results, "the validator ran no check"
    return {r.requirement for r in report.results if r.status == "FAIL"}


def check_store(shared_data: Path, tmp_path: Path, name: str) -> None:
    folder, start, end = CASES[name]
    out = tmp_path / f"{name}.zarr"
    source = resolve_source(name, license="CC-BY-4.0", identifier="XX-TEST-rainfall")
    ingest(shared_data / folder, source, out, start=start, end=end, progress=False,
           creator="A Tester <tester@example.org>")
    assert failures(out) <= BY_NATURE | SOURCE_NATURE.get(name, set()), name
    opened = xr.open_zarr(out, decode_coords="all")
    crs = opened.rain_rate.rio.crs
    assert crs is not None, f"rioxarray finds no CRS in the {name} store"
    assert pyproj.CRS(crs.to_wkt()).equals(pyproj.CRS(opened.attrs["crs_wkt"]))


def test_a_knmi_store_passes_every_check_a_sample_can(shared_data: Path, tmp_path: Path):
    check_store(shared_data, tmp_path, "knmi")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n != "knmi"])
def test_a_store_of_every_bundled_source_passes_every_check_it_can(
    shared_data: Path, tmp_path: Path, name: str
) -> None:
    check_store(shared_data, tmp_path, name)


def test_the_synthetic_store_fails_only_what_its_length_must(tmp_path: Path) -> None:
    ds = synthesize(frames=12, height=260, width=260, seed=1)
    ds.attrs.update(mlcast_created_by="A Tester <tester@example.org>",
                    mlcast_dataset_identifier="XX-SYNTHETIC-rainfall")
    path = write_store(ds.isel(time=[0, 1, 2]), tmp_path / "s.zarr")
    append_frames(path, ds.isel(time=[5, 6]))
    assert failures(path) == BY_NATURE
    stored = xr.open_zarr(path)
    np.testing.assert_array_equal(stored.missing_times.values, ds.time.values[3:5])
    assert stored.attrs["license"] == "CC0-1.0"
