"""Forecast files that the CF checkers a data centre runs accept, and that pysteps plots.

IOOS compliance-checker (``cf:1.8``, with its bundled standard-name table) and the CF
checker ``cfchecks`` (cfchecker 4.1, pointed at that table and at empty local area-type and
region tables, so it runs offline) each read a forecast file written by ``write_forecast``
and one assembled by ``metnet forecast --out OUT.nc``; each test skips when its checker is
not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import xarray as xr

from metnet.cli import main
from metnet.forecast import forecast_dataset
from metnet.io.forecast_file import GEODATA_KEYS, RATE_VARIABLES, write_forecast
from metnet.io.store import open_store

matplotlib.use("Agg")


@pytest.fixture(scope="module", params=["write_forecast", "cli"])
def forecast_file(request, tiny_net, tiny_store, tiny_checkpoint, tmp_path_factory) -> Path:
    """A netCDF forecast file of two init times, with bin probabilities."""
    folder = tmp_path_factory.mktemp("cf")
    if request.param == "write_forecast":
        ds = forecast_dataset(tiny_net, open_store(tiny_store),
                              ["2024-06-01T12:25", "2024-06-01T12:30"], [5, 15],
                              bin_probabilities=True)
        return write_forecast(ds, folder / "forecast.nc")
    out = folder / "forecast.nc"
    assert main(["forecast", "--ckpt_path", str(tiny_checkpoint), "--store", str(tiny_store),
                 "--start", "2024-06-01T12:25", "--end", "2024-06-01T12:30",
                 "--lead_times", "[5,15]", "--bin_probabilities", "--out", str(out)]) == 0
    return out


def _standard_name_table() -> Path:
    """The CF standard-name table that compliance-checker ships (version 93 and later)."""
    import compliance_checker

    return Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"


def test_compliance_checker_cf_1_8_finds_nothing_wrong(forecast_file):
    if importlib.util.find_spec("compliance_checker") is None:
        pytest.skip("compliance-checker is not installed (pip install compliance-checker)")
    from compliance_checker.runner import CheckSuite

    suite = CheckSuite()
    suite.load_all_available_checkers()
    dataset = suite.load_dataset(str(forecast_file))
    results, errors = suite.run_all(dataset, ["cf:1.8"], skip_checks=[])["cf:1.8"]
    assert not errors, errors  # no check crashed
    report = suite.build_structure("cf:1.8", results, str(forecast_file), True)
    failed = {level: [(r.name, r.msgs) for r in report[level] if r.value[0] != r.value[1]]
              for level in ("high_priorities", "medium_priorities")}
    assert failed == {"high_priorities": [], "medium_priorities": []}


def test_cfchecks_finds_no_error(forecast_file, tmp_path):
    if importlib.util.find_spec("compliance_checker") is None:
        pytest.skip("compliance-checker (whose standard-name table cfchecks reads) is not "
                    "installed")
    try:
        from cfchecker.cfchecks import CFChecker
    except (ImportError, OSError) as err:  # cfunits needs the udunits2 C library
        pytest.skip(f"cfchecker is not usable ({err}); pip install cfchecker and install "
                    "libudunits2")
    area, region = tmp_path / "area-types.xml", tmp_path / "regions.xml"
    area.write_text("<area_type_table><version_number>none</version_number><date>none</date>"
                    "</area_type_table>")
    region.write_text("<standardized_region_list><version_number>none</version_number>"
                      "<date>none</date></standardized_region_list>")
    checker = CFChecker(cfStandardNamesXML=str(_standard_name_table()),
                        cfAreaTypesXML=str(area), cfRegionNamesXML=str(region),
                        version="1.8", silent=True)
    checker.checker(str(forecast_file))
    counts = checker.get_total_counts()
    messages = [m for m in checker.all_messages if m.startswith(("FATAL:", "ERROR:"))]
    assert (counts["FATAL"], counts["ERROR"], messages) == (0, 0, [])


@pytest.mark.filterwarnings("ignore:cartopy package is required")
def test_pysteps_plots_a_forecast_slice_from_the_file_attributes_alone(forecast_file,
                                                                      tiny_store):
    import matplotlib.pyplot as plt
    from pysteps.visualization import plot_precip_field

    store = open_store(tiny_store)
    x, y = store["x"].values, store["y"].values
    with xr.open_dataset(forecast_file) as ds:
        for name in RATE_VARIABLES:
            assert set(GEODATA_KEYS) <= set(ds[name].attrs), name
        rate = ds["precip_rate_mean"]
        field = rate.isel(init_time=0, lead_time=1).values
        geodata = dict(rate.attrs)
    assert geodata["xpixelsize"] == geodata["ypixelsize"] == 1000.0
    assert geodata["yorigin"] == "upper" and y[0] > y[-1]  # the store's first row is north
    ax = plot_precip_field(field, geodata=geodata)
    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_extent(),
                               [x.min() - 500, x.max() + 500, y.min() - 500, y.max() + 500])
    assert image.origin == "upper"
    plt.close("all")
