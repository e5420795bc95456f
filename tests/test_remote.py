"""Stores read from URLs: a real HTTP server on 127.0.0.1 serves zarr folders, which train,
forecast and check as local stores do; a store of another maker laid out per the MLCast
specification (reflectivity in dBZ, ``missing_times``) trains as well; derived files of a
remote store go to a local cache folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr
from conftest import run_metnet, serve_folder
from zarr.codecs import ZstdCodec

from metnet.data.frames import StoreFrames
from metnet.io.store import (
    StoreError,
    append_frames,
    cache_folder,
    grid_mapping,
    lat_lon,
    open_store,
    store_fingerprint,
    write_store,
)
from metnet.io.synthetic import synthesize

REPO = Path(__file__).resolve().parents[1]
#: The frame the MLCast-layout store leaves out (listed in its missing_times).
MISSING = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP by a server on 127.0.0.1, and its base URL."""
    root = tmp_path_factory.mktemp("served")
    with serve_folder(root) as url:
        yield root, url


@pytest.fixture(scope="module")
def synthetic_url(served: tuple[Path, str]) -> str:
    """The URL of a synthetic store written by metnet: 60 frames of 96 x 96 px."""
    root, base = served
    write_store(synthesize(frames=60, height=96, width=96, seed=2), root / "synthetic.zarr")
    return f"{base}/synthetic.zarr"


def mlcast_dataset() -> tuple[xr.Dataset, np.ndarray]:
    """A store as another maker following the MLCast specification would write it with
    plain xarray: reflectivity ``DBZH`` in dBZ (Marshall-Palmer), one frame left out and
    listed in ``missing_times``, the CRS in a grid-mapping variable only; and the rain rate
    (mm/h) it encodes, on its times."""
    synthetic = synthesize(frames=60, height=96, width=96, seed=4)
    keep = np.arange(synthetic.sizes["time"]) != MISSING
    rate = synthetic["rain_rate"].values[keep]
    with np.errstate(divide="ignore"):
        dbz = np.where(rate > 0, 10 * np.log10(200.0 * rate ** 1.6), -10.0)
    dbz = np.where(np.isnan(rate), np.nan, dbz).astype(np.float32)
    floor = (10 ** (-1.0) / 200.0) ** (1 / 1.6)  # the rate of -10 dBZ
    rate = np.where(np.isnan(rate) | (rate > 0), rate, floor).astype(np.float32)
    crs = pyproj.CRS.from_user_input(synthetic.attrs["crs"])
    x, y = synthetic["x"].values, synthetic["y"].values
    ds = xr.Dataset(
        {"DBZH": (("time", "y", "x"), dbz, {
            "standard_name": "equivalent_reflectivity_factor", "units": "dBZ",
            "long_name": "equivalent reflectivity factor", "grid_mapping": "crs"}),
         "crs": ((), np.int32(0), grid_mapping(crs))},
        coords={"time": synthetic["time"].values[keep], "y": y, "x": x,
                "missing_times": ("missing_times", synthetic["time"].values[~keep]),
                **lat_lon(x, y, crs)})
    ds["x"].attrs = {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}
    ds["y"].attrs = {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}
    ds.attrs = {"Conventions": "CF-1.8", "mlcast_dataset_identifier": "xx-test-reflectivity",
                "license": "CC-BY-4.0"}
    return ds, rate


@pytest.fixture(scope="module")
def mlcast_url(served: tuple[Path, str]) -> str:
    """The URL of :func:`mlcast_dataset` written with ``to_zarr`` (one zstd chunk per frame,
    consolidated metadata)."""
    root, base = served
    ds, _ = mlcast_dataset()
    encoding = {"DBZH": {"chunks": (1, 96, 96), "compressors": [ZstdCodec(level=3)]}}
    ds.to_zarr(root / "mlcast.zarr", zarr_format=3, consolidated=True, encoding=encoding)
    return f"{base}/mlcast.zarr"


def tiny_fit(store: str) -> list[str]:
    """``metnet fit`` options of a tiny network trained 2 steps on ``store``."""
    return [
        "--config", str(REPO / "configs/synthetic.yaml"),
        "--data.stores", f"[{store}]", "--data.context_size", "48", "--data.target_size", "16",
        "--data.context_frames", "3", "--data.lead_times", "[5, 15, 30]",
        "--data.batch_size", "2", "--data.patches_per_window", "1",
        "--model.net", str(REPO / "configs/model/tiny.yaml"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ]


def test_a_url_store_reads_as_its_local_copy(served, synthetic_url):
    root, _ = served
    remote, local = open_store(synthetic_url), open_store(root / "synthetic.zarr")
    xr.testing.assert_identical(remote, local)
    frames = StoreFrames(synthetic_url, cache="lazy")
    assert frames.name == "synthetic"
    np.testing.assert_array_equal(
        frames.read(np.arange(4), slice(10, 30), slice(5, 50)),
        StoreFrames(root / "synthetic.zarr", cache="lazy").read(np.arange(4), slice(10, 30),
                                                                slice(5, 50)))


def test_a_url_store_fingerprint_changes_when_frames_are_appended(served):
    """What keeps the motion cache of a remote store in step with it."""
    root, base = served
    write_store(synthesize(frames=6, height=16, width=16, seed=1), root / "growing.zarr")
    before = store_fingerprint(f"{base}/growing.zarr")
    assert store_fingerprint(f"{base}/growing.zarr") == before
    later = synthesize(frames=2, height=16, width=16, seed=1, start="2024-06-01T12:30")
    append_frames(root / "growing.zarr", later)
    assert store_fingerprint(f"{base}/growing.zarr") != before


def test_check_reads_every_frame_of_a_url_store(synthetic_url):
    result = run_metnet("check", synthetic_url, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"{synthetic_url}: every frame reads" in result.stdout


def test_an_unreachable_url_is_one_line_naming_it(tmp_path):
    url = "http://127.0.0.1:1/nowhere.zarr"  # port 1: nothing listens, the connection fails
    result = run_metnet("check", url, cwd=tmp_path)
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith(f"metnet check: error: {url}: cannot be read (")
    assert "Cannot connect to host 127.0.0.1:1" in line


def test_an_s3_store_takes_anonymous_access_and_an_endpoint(tmp_path):
    """The MLCast catalog's form of access, pointed at an endpoint where nothing listens:
    the one-line error shows the request went there, anonymously (no credentials asked)."""
    url = "s3://mlcast-source-datasets/radklim/v0.1.1/5_minutes.zarr"
    result = run_metnet("check", url, "--storage_options",
                        '{"anon": true, "endpoint_url": "http://127.0.0.1:1", '
                        '"config_kwargs": {"retries": {"max_attempts": 1}}}', cwd=tmp_path)
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith(f"metnet check: error: {url}: cannot be read (EndpointConnectionError")
    assert '"http://127.0.0.1:1/mlcast-source-datasets/radklim/' in line


def test_a_missing_store_at_a_served_url_is_one_line(served, tiny_checkpoint, tmp_path):
    url = f"{served[1]}/absent.zarr"
    result = run_metnet("forecast", "--ckpt_path", tiny_checkpoint, "--store", url,
                        "--init_time", "2024-06-01T12:25", "--out", tmp_path / "f.nc",
                        cwd=tmp_path)
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert line == f"metnet forecast: error: {url}: no zarr store there (none of zarr.json, " \
                   ".zmetadata, .zgroup)"


def test_an_mlcast_store_reads_as_rain_rate(mlcast_url):
    ds = open_store(mlcast_url)
    _, rate = mlcast_dataset()
    assert ds.attrs["step_minutes"] == 5 and ds.attrs["source"] == "xx-test-reflectivity"
    assert pyproj.CRS.from_user_input(ds.attrs["crs"]).equals(pyproj.CRS.from_user_input(
        synthesize(frames=1, height=8, width=8).attrs["crs"]))
    assert ds["rain_rate"].dtype == np.float32 and ds["rain_rate"].attrs["units"] == "kg m-2 h-1"
    np.testing.assert_allclose(ds["rain_rate"][3:5, 10:40].values, rate[3:5, 10:40], rtol=1e-4)
    frames = StoreFrames(mlcast_url, cache="lazy", max_rate=1e9)
    np.testing.assert_allclose(frames.read(np.array([0, 40]), slice(0, 96), slice(7, 9)),
                               rate[[0, 40], :, 7:9], rtol=1e-4)
    assert len(frames.times) == 59 and ds["missing_times"].values[0] not in frames.times


def test_a_packed_mlcast_store_reads_alike_in_training_indexes_and_forecasts(tmp_path):
    """int16 dBZ with a scale factor and a fill value, as many radar archives pack it: the
    raw zarr reads of training and of the sample index undo the packing as xarray does."""
    from metnet.io.sample_index import _StoreView

    ds, rate = mlcast_dataset()
    encoding = {"DBZH": {"dtype": "int16", "scale_factor": 0.5, "_FillValue": -32768,
                         "chunks": (1, 96, 96)}}
    store = tmp_path / "packed.zarr"
    ds.to_zarr(store, zarr_format=3, consolidated=True, encoding=encoding)
    forecast_read = open_store(store)["rain_rate"][:8].values
    training_read = StoreFrames(store, cache="lazy", max_rate=1e9).read(
        np.arange(8), slice(None), slice(None))
    index_read = _StoreView(store).read(0, 8)
    assert np.isnan(rate[:8]).any() and not np.isnan(rate[:8]).all()
    for read in (forecast_read, training_read, index_read):
        np.testing.assert_array_equal(np.isnan(read), np.isnan(rate[:8]))  # fill -> NaN
        np.testing.assert_allclose(read, rate[:8], rtol=0.04)  # dBZ to 0.25 dB
    np.testing.assert_array_equal(training_read, forecast_read)
    np.testing.assert_array_equal(index_read, forecast_read)


def test_a_remote_store_caches_under_the_user_cache_unless_told(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = "s3://bucket/radar.zarr"
    default = cache_folder(url)
    assert default.parent == tmp_path / "xdg" / "metnet" and default.is_dir()
    assert cache_folder("https://host/radar.zarr") != default  # one folder per URL
    chosen = cache_folder(url, tmp_path / "mine")
    assert chosen.parent == tmp_path / "mine"
    local = tmp_path / "local.zarr"
    local.mkdir()
    assert cache_folder(local) == tmp_path / ".metnet-cache"
    # local stores of one name get a sub-folder each under a cache_dir, as URLs do
    (tmp_path / "a" / "local.zarr").mkdir(parents=True)
    assert cache_folder(local, tmp_path / "mine").parent == tmp_path / "mine"
    assert cache_folder(local, tmp_path / "mine") != cache_folder(tmp_path / "a" / "local.zarr",
                                                                  tmp_path / "mine")


def test_no_writable_cache_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=r"s3://b/r.zarr: no writable cache folder .* tried "
                       r".*a-file.*--data.cache_dir") as caught:
        cache_folder("s3://b/r.zarr", blocker / "cache")
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_fit_and_forecast_from_a_url(served, synthetic_url, tiny_checkpoint, tmp_path,
                                     monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    secret = "Bearer secret-token-8d1f"  # fsspec options may carry credentials
    result = run_metnet("fit", *tiny_fit(synthetic_url), "--data.storage_options",
                        f"{{headers: {{Authorization: {secret}}}}}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "outputs/checkpoints/last.ckpt").is_file()
    written = [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()]
    assert any(f.name == "config.yaml" for f in written)
    assert not [str(f) for f in written if secret.encode() in f.read_bytes()]
    # the motion cache of the remote store is in the user cache, nothing beside the store
    assert list((tmp_path / "xdg" / "metnet").glob("*/synthetic.motion-*.zarr"))
    root, _ = served
    assert not (root / ".metnet-cache").exists()

    outputs = {}
    for name, store in (("remote", synthetic_url), ("local", root / "synthetic.zarr")):
        outputs[name] = tmp_path / f"{name}.nc"
        result = run_metnet("forecast", "--ckpt_path", tiny_checkpoint, "--store", store,
                            "--init_time", "2024-06-01T13:00", "--lead_times", "[5,15]",
                            "--out", outputs[name], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    with xr.open_dataset(outputs["remote"]) as remote, xr.open_dataset(outputs["local"]) as local:
        assert remote["precip_rate_mean"].notnull().any()
        xr.testing.assert_equal(remote, local)


@pytest.mark.slow
def test_fit_on_an_mlcast_store_at_a_url(mlcast_url, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = run_metnet("fit", *tiny_fit(mlcast_url), "--data.cache_dir", tmp_path / "cache",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "outputs/checkpoints/last.ckpt").is_file()
    assert list((tmp_path / "cache").glob("*/mlcast.motion-*.zarr"))


def test_loader_workers_read_a_url_store_as_the_local_copy(served, synthetic_url, tmp_path,
                                                          monkeypatch):
    """Lazy reads in DataLoader worker processes, each opening the URL itself."""
    import torch

    from metnet.data.datamodule import NowcastDataModule

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the URL's sample index
    root, _ = served
    settings = dict(context_frames=3, context_size=48, target_size=16, lead_times=[5, 15],
                    batch_size=3, cache="lazy", seed=1)
    remote = NowcastDataModule([synthetic_url], num_workers=2, **settings)
    local = NowcastDataModule([str(root / "synthetic.zarr")], **settings)
    remote.setup("fit")
    local.setup("fit")
    got, expected = next(iter(remote.train_dataloader())), next(iter(local.train_dataloader()))
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, equal_nan=True)
