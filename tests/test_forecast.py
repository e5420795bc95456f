"""Whole-domain forecasts: tiling and blending, the CF output files, refusals, the CLI."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY
from torch import nn

from metnet.cli import main
from metnet.distribution import rain_to_bin
from metnet.forecast import ForecastError, complete_init_times, forecast_dataset
from metnet.io.forecast_file import ForecastOutput, part_compression, write_forecast
from metnet.io.store import open_store
from metnet.models import MetNet
from metnet.nowcasts.model import make_tiling
from metnet.transforms import clean_rate, input_to_rate


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def net(tiny_net) -> MetNet:
    return tiny_net


@pytest.fixture(scope="module")
def forecast(net, store) -> xr.Dataset:
    ds = open_store(store)
    return forecast_dataset(net, ds, [ds.time.values[4], "2024-06-01T12:30"],
                            bin_probabilities=True)


def last_frame(store: Path, init: np.datetime64) -> np.ndarray:
    return clean_rate(open_store(store)["rain_rate"].sel(time=init).values.copy())


# -- content ---------------------------------------------------------------------------


def test_forecast_is_a_consistent_distribution_nan_outside_coverage(forecast, store):
    assert forecast["precip_rate_mean"].dims == ("init_time", "lead_time", "y", "x")
    assert forecast["lead_time"].values.tolist() == [5, 10, 15, 20, 25, 30]
    assert forecast["precip_rate_quantile"].dims[0] == "quantile"
    for k, init in enumerate(forecast["init_time"].values):
        outside = np.isnan(last_frame(store, init))
        assert 0 < outside.sum() < outside.size
        for name in ("precip_rate_mean", "probability_of_exceedance", "bin_probability"):
            values = forecast[name].isel(init_time=k).values
            assert np.isnan(values[..., outside]).all()
            assert np.isfinite(values[..., ~outside]).all()
    inside = forecast.where(np.isfinite(forecast["precip_rate_mean"]))
    total = inside["bin_probability"].sum("bin", skipna=False)
    np.testing.assert_allclose(total.values[np.isfinite(total.values)], 1.0, atol=1e-5)
    q = inside["precip_rate_quantile"].values
    assert (np.diff(q, axis=0)[np.isfinite(np.diff(q, axis=0))] >= -1e-5).all()
    p = inside["probability_of_exceedance"].values
    assert (np.diff(p, axis=0)[np.isfinite(np.diff(p, axis=0))] <= 1e-6).all()


class PersistenceNet(nn.Module):
    """A stand-in network: each target pixel's distribution is a single bin, the bin of the
    last context frame's rain at that pixel, so a misplaced tile shows in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.config = dict(TINY)
        self.bin_edges = MetNet(**TINY).bin_edges
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor, lead_times: torch.Tensor) -> torch.Tensor:
        margin = (TINY["input_size"] - TINY["target_size"]) // 2
        crop = x[:, -1, 0, margin:margin + TINY["target_size"], margin:margin + TINY[
            "target_size"]]
        bins = rain_to_bin(input_to_rate(crop), self.bin_edges)
        logits = 60.0 * nn.functional.one_hot(bins, len(self.bin_edges) - 1).movedim(-1, 1)
        return logits[:, None].expand(-1, len(lead_times), -1, -1, -1).float()


def test_tiles_land_where_their_targets_are_up_to_the_domain_edges(store):
    ds = open_store(store)
    thresholds = (0.1, 0.5, 1.0, 4.0)  # bin edges: exceedance is exact for a one-bin pmf
    fc = forecast_dataset(PersistenceNet(), ds, ["2024-06-01T12:25"], [5], thresholds=thresholds)
    rate = last_frame(store, np.datetime64("2024-06-01T12:25"))
    for t in thresholds:
        expected = np.where(np.isnan(rate), np.nan, (rate >= t).astype(np.float32))
        got = fc["probability_of_exceedance"].sel(threshold=t).values[0, 0]
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_blending_a_position_independent_network_is_seamless(net, store):
    flat = copy.deepcopy(net)
    with torch.no_grad():
        flat.head.logits.weight.zero_()
        flat.head.logits.bias.copy_(torch.linspace(2.0, -2.0, flat.num_bins))
    ds = open_store(store)
    tiling = make_tiling(flat, (ds.sizes["y"], ds.sizes["x"]))
    assert tiling.counts == (8, 7) and tiling.stride == (8, 8)
    fc = forecast_dataset(flat, ds, ["2024-06-01T12:25"], [10, 30])
    mean = fc["precip_rate_mean"].values
    inside = ~np.isnan(last_frame(store, np.datetime64("2024-06-01T12:25")))
    assert np.isnan(mean[..., ~inside]).all()
    values = mean[..., inside]
    np.testing.assert_allclose(values, values.flat[0], rtol=1e-5)


def test_a_wider_stride_gives_the_same_constant_field(net, store):
    """Tiles that do not overlap (stride = target size) and ones that overlap 4-fold agree
    on a field that does not depend on position."""
    flat = copy.deepcopy(net)
    with torch.no_grad():
        flat.head.logits.weight.zero_()
    ds = open_store(store)
    a = forecast_dataset(flat, ds, ["2024-06-01T12:25"], [5], stride=(16, 16))
    b = forecast_dataset(flat, ds, ["2024-06-01T12:25"], [5], stride=(4, 4))
    xr.testing.assert_allclose(a, b, rtol=1e-5)


def test_the_file_says_how_the_network_covered_the_domain(forecast, store):
    assert forecast.attrs["domain_coverage"].startswith("overlapping tiles")
    one_pass = MetNet(**{**TINY, "position": "none"}).eval()
    assert forecast_dataset(one_pass, open_store(store), ["2024-06-01T12:25"], [5]).attrs[
        "domain_coverage"] == "one pass of the network over the whole domain"


# -- files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_written_file_equals_the_prediction(forecast, tmp_path, suffix):
    path = write_forecast(forecast, tmp_path / f"out{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    back = xr.open_dataset(path, engine="netcdf4" if suffix == ".nc" else "zarr").load()
    xr.testing.assert_identical(back.drop_vars("crs"), forecast.drop_vars("crs"))
    assert back["crs"].attrs["crs_wkt"].startswith("PROJCRS")
    with pytest.raises(FileExistsError):
        write_forecast(forecast, path)


def test_netcdf_carries_cf_attributes(forecast, tmp_path):
    path = write_forecast(forecast, tmp_path / "out.nc")
    with netCDF4.Dataset(path) as nc:
        mean = nc["precip_rate_mean"]
        assert mean.dimensions == ("init_time", "lead_time", "y", "x")
        assert (mean.units, mean.standard_name, mean.grid_mapping) == (
            "mm/h", "rainfall_rate", "crs")
        assert nc["probability_of_exceedance"].units == "1"
        assert nc["init_time"].units.startswith("minutes since 1970-01-01")
        assert nc["lead_time"].units == "minute"
        assert nc["x"].standard_name == "projection_x_coordinate"
        assert "PROJCRS" in nc["crs"].crs_wkt and nc.Conventions == "CF-1.8"
        assert nc["bin_edges"].units == "mm/h"
    if shutil.which("ncdump"):
        header = subprocess.run(["ncdump", "-h", str(path)], capture_output=True, text=True,
                                check=True).stdout
        assert "precip_rate_mean:standard_name = \"rainfall_rate\"" in header


def test_kept_netcdf_is_zlib_and_its_hidden_parts_are_compressed_fast(forecast, tmp_path):
    """What a user keeps opens in every netCDF reader (zlib); the parts an ``OUT.nc`` is
    assembled from, read back only by metnet, use the faster codec, and the assembled file
    equals the forecast written."""
    output = ForecastOutput(tmp_path / "out.nc", settings={"test": 1})
    for i in range(forecast.sizes["init_time"]):
        output.write(forecast.isel(init_time=[i]))
    fast = part_compression()
    for part in output._part_files():
        with netCDF4.Dataset(part) as nc:
            filters = nc["precip_rate_mean"].filters()
            assert filters.get(fast.get("compression", "zlib")), filters
    with netCDF4.Dataset(output.close()) as nc:
        assert nc["precip_rate_mean"].filters()["zlib"]
        assert not nc["precip_rate_mean"].filters().get("zstd")
    back = xr.open_dataset(tmp_path / "out.nc").load()
    xr.testing.assert_identical(back.drop_vars("crs"),
                                forecast.drop_vars("crs").assign_attrs(back.attrs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nc"]


def test_parts_fall_back_to_zlib_where_hdf5_finds_no_zstd_filter(tmp_path):
    """HDF5 loads its zstd filter from ``HDF5_PLUGIN_PATH`` (which conda and HPC modules
    set): where the filter is not there, the parts are zlib, so ``OUT.nc`` is still
    written."""
    code = ("from metnet.io.forecast_file import KEPT_COMPRESSION, part_compression; "
            "print(part_compression() == KEPT_COMPRESSION)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path)}, check=True)
    assert run.stdout.strip() == "True"


def test_a_failed_write_leaves_nothing_behind(forecast, tmp_path):
    broken = forecast.copy()
    broken.attrs["unwritable"] = {"a dict": "is no netCDF attribute"}
    with pytest.raises(TypeError):
        write_forecast(broken, tmp_path / "out.nc")
    assert list(tmp_path.iterdir()) == []


# -- refusals --------------------------------------------------------------------------


def test_refuses_init_times_without_context_or_outside_the_store(net, store):
    ds = open_store(store)
    with pytest.raises(ForecastError, match="lacks past frames 2024-06-01T11:55"):
        forecast_dataset(net, ds, ["2024-06-01T12:05"])
    with pytest.raises(ForecastError, match="not a time of the store"):
        forecast_dataset(net, ds, ["2024-06-01T12:07"])
    with pytest.raises(ForecastError, match="lead times must be positive multiples of 5"):
        forecast_dataset(net, ds, ["2024-06-01T12:25"], [5, 35])


def test_complete_init_times_need_context_and_targets(store):
    ds = open_store(store)
    times = complete_init_times(ds, "2024-06-01T12:00", "2024-06-01T13:00", 3, [5, 30])
    assert [str(t)[11:16] for t in (times[0], times[-1])] == ["12:10", "12:25"]


def _cli(*args: str) -> int:
    return main(["forecast", *map(str, args)])


def test_a_forecast_imports_neither_lightning_nor_torchmetrics(store, checkpoint, tmp_path):
    """Forecasting from a checkpoint needs no training library: Lightning and torchmetrics
    take seconds to import, paid by every forecast started on its own (a cron job per radar
    frame)."""
    code = ("import sys; from metnet.cli import main; "
            f"code = main(['forecast', '--ckpt_path', {str(checkpoint)!r}, '--store', "
            f"{str(store)!r}, '--init_time', '2024-06-01T12:25', '--out', "
            f"{str(tmp_path / 'out.nc')!r}]); "
            "print(code, sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.splitlines()[-1] == "0 []", run.stderr


def test_cli_refusals_are_one_line_and_leave_no_output(store, checkpoint, tmp_path, capsys):
    out = tmp_path / "out.nc"
    assert _cli("--ckpt_path", checkpoint, "--store", store, "--init_time", "2024-06-01T12:05",
                "--out", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("metnet forecast: error: init time 2024-06-01T12:05 lacks past")
    assert err.count("\n") == 1

    wide = MetNet(**{**TINY, "input_channels": 3})
    torch.save({"state_dict": {f"net.{k}": v for k, v in wide.state_dict().items()},
                "metnet_net_config": wide.config, "hyper_parameters": {}}, tmp_path / "c3.ckpt")
    assert _cli("--ckpt_path", tmp_path / "c3.ckpt", "--store", store, "--init_time",
                "2024-06-01T12:25", "--out", out) == 1
    assert "expects 3 input channels" in capsys.readouterr().err

    if not torch.cuda.is_available():
        assert _cli("--ckpt_path", checkpoint, "--store", store, "--init_time",
                    "2024-06-01T12:25", "--out", out, "--device", "cuda") == 1
        assert capsys.readouterr().err == ("metnet forecast: error: --device cuda: this "
                                           "machine has no CUDA GPU that torch can use (use "
                                           "--device cpu)\n")

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert _cli("--ckpt_path", tmp_path / "junk.ckpt", "--store", store, "--init_time",
                "2024-06-01T12:25", "--out", out) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c3.ckpt", "junk.ckpt"]


def test_cli_forecasts_a_period_to_zarr_with_maps(store, checkpoint, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert _cli("--ckpt_path", checkpoint, "--store", store, "--start", "2024-06-01T12:45",
                "--end", "2024-06-01T13:00", "--out", out, "--lead_times", "[5,15]",
                "--quantiles", "[0.5]", "--thresholds", "[1]", "--plot", tmp_path / "maps") == 0
    ds = xr.open_zarr(out)
    assert ds.sizes == {"init_time": 3, "lead_time": 2, "y": 70, "x": 62, "quantile": 1,
                        "threshold": 1}
    assert len(list((tmp_path / "maps").glob("forecast_*.png"))) == 3
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["forecast", "evaluate"])
def test_cli_reads_the_checkpoint_once(command, store, checkpoint, tmp_path, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    when = (["--init_time", "2024-06-01T12:25"] if command == "forecast"
            else ["--start", "2024-06-01T12:25", "--end", "2024-06-01T12:25",
                  "--steps_members", "0"])
    out = tmp_path / ("f.nc" if command == "forecast" else "scores")
    assert main([command, "--ckpt_path", str(checkpoint), "--store", str(store), *when,
                 "--lead_times", "[5]", "--out", str(out)]) == 0
    assert [str(p) for p in loads] == [str(checkpoint)]


def test_prior_histograms_of_the_whole_domain_equal_those_of_each_tile(store, monkeypatch):
    """A forecast computes the extrapolation prior once for the domain; each tile's crop of
    it is what the network would compute from the tile's own inputs."""
    from metnet.data.motion import lead_planes
    from metnet.nowcasts import model

    torch.manual_seed(0)
    net = MetNet(**{**TINY, "lead_channels": 2, "prior": True, "dry_bin": True}).eval()
    with torch.no_grad():
        net.head.logits.weight.normal_(0.0, 0.1)  # a trained-like correction and mixture
    rate = clean_rate(open_store(store)["rain_rate"].values[:4].copy())
    leads = [5, 15, 30]
    per_lead = lead_planes(rate[-3:], [m / 5 for m in leads], velocity=False)
    tiling = make_tiling(net, rate.shape[1:])
    once = model.blended_probabilities(net, rate[-3:], leads, tiling, per_lead=per_lead)
    monkeypatch.setattr(model, "prior_histograms", lambda *args: None)
    per_tile = model.blended_probabilities(net, rate[-3:], leads, tiling, per_lead=per_lead)
    torch.testing.assert_close(once, per_tile, atol=1e-6, rtol=0)


# -- streaming and resuming ------------------------------------------------------------

PERIOD = ["--start", "2024-06-01T12:40", "--end", "2024-06-01T12:55"]
SMALL = ["--lead_times", "[5,15]", "--quantiles", "[0.5]", "--thresholds", "[1]",
         "--device", "cpu"]  # compared with forecasts made on the CPU


def _reference(net, store) -> xr.Dataset:
    return forecast_dataset(net, open_store(store), ["2024-06-01T12:40", "2024-06-01T12:45",
                                                     "2024-06-01T12:50", "2024-06-01T12:55"],
                            [5, 15], quantiles=[0.5], thresholds=[1.0])


@pytest.mark.parametrize("name", ["out.zarr", "out.nc", "out"])
def test_a_rerun_resumes_after_the_init_times_written(name, net, store, checkpoint, tmp_path,
                                                      capsys):
    """A period written in two runs (the first stopped after two init times) equals one
    in-memory forecast; the second run forecasts only what the first did not write."""
    out = tmp_path / name
    first = ["--start", "2024-06-01T12:40", "--end", "2024-06-01T12:45"]
    assert _cli("--ckpt_path", checkpoint, "--store", store, *first, "--out",
                tmp_path / "part" / name if name == "out.nc" else out, *SMALL) == 0
    if name == "out.nc":  # as if the first run were killed before assembling the file
        shutil.move(tmp_path / "part" / name, tmp_path / "first.nc")
        parts = tmp_path / ".out.nc.parts"
        parts.mkdir()
        with xr.open_dataset(tmp_path / "first.nc") as ds:
            for i in range(ds.sizes["init_time"]):
                write_forecast(ds.isel(init_time=[i]).load(), parts / f"{i}.nc")
    capsys.readouterr()
    assert _cli("--ckpt_path", checkpoint, "--store", store, *PERIOD, "--out", out,
                *SMALL) == 0
    assert "2 init times already written, 2 to go" in capsys.readouterr().err
    if name == "out":
        written = xr.concat([xr.open_dataset(p) for p in sorted(out.glob("*.nc"))],
                            dim="init_time", data_vars="minimal", coords="minimal",
                            compat="override")
    else:
        written = xr.open_zarr(out) if name.endswith(".zarr") else xr.open_dataset(out)
    if name == "out.zarr":  # the appended init times share one object
        assert sorted(p.name for p in (out / "init_time" / "c").iterdir()) == ["0"]
    expected = _reference(net, store)
    np.testing.assert_array_equal(written.init_time.values, expected.init_time.values)
    for variable in ("precip_rate_mean", "probability_of_exceedance", "rain_forecast"):
        np.testing.assert_allclose(written[variable].values, expected[variable].values,
                                   rtol=1e-6, equal_nan=True)
    assert not (tmp_path / ".out.nc.parts").exists()


def test_an_output_of_other_settings_is_not_resumed(store, checkpoint, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert _cli("--ckpt_path", checkpoint, "--store", store, *PERIOD, "--out", out,
                *SMALL) == 0
    capsys.readouterr()
    assert _cli("--ckpt_path", checkpoint, "--store", store, *PERIOD, "--out", out,
                "--lead_times", "[5]", "--quantiles", "[0.5]", "--thresholds", "[1]") == 1
    assert "holds a forecast made with other settings" in capsys.readouterr().err
