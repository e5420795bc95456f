"""Motion-informed lead-time inputs: the cache, the dataset's ``lead_inputs``, the network
path and the forecast's whole-domain inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pysteps import motion, nowcasts
from pysteps.utils import transformation

from metnet.data import motion as motion_module
from metnet.data.datamodule import NowcastDataModule
from metnet.data.frames import StoreFrames
from metnet.data.motion import MotionCache, lead_planes
from metnet.data.windows import DataConfigError, complete_windows
from metnet.io.store import append_frames, make_dataset, open_store, write_store
from metnet.models import MetNet
from metnet.transforms import input_to_rate

LEADS = [5, 10, 15]
KW = dict(context_frames=4, context_size=48, target_size=16, lead_times=LEADS,
          split_fractions=(0.5, 0.25, 0.25), batch_size=3, seed=1)


def _blob_frames(n: int, shift: tuple[int, int], size: int = 64) -> np.ndarray:
    """(n, size, size) mm/h: smooth rain blobs moving ``shift`` (rows, cols) pixels per step."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = []
    for k in range(n):
        dy, dx = k * shift[0], k * shift[1]
        field = 6.0 * np.exp(-((yy - 24 - dy) ** 2 + (xx - 14 - dx) ** 2) / 60.0)
        field += 3.0 * np.exp(-((yy - 40 - dy) ** 2 + (xx - 26 - dx) ** 2) / 30.0)
        frames.append(np.where(field > 0.05, field, 0.0))
    return np.asarray(frames, np.float32)


def _store(path: Path, rate: np.ndarray, start: str = "2024-06-01T12:00") -> Path:
    times = pd.date_range(start, periods=len(rate), freq="5min")
    size = rate.shape[1]
    ds = make_dataset(rate, times, np.arange(size) * 1000.0, np.arange(size)[::-1] * 1000.0,
                      crs="EPSG:3035", source="test", step_minutes=5)
    return write_store(ds, path)


@pytest.fixture(scope="module")
def translating_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blobs moving 1 row down and 2 columns right per 5-minute step, 24 frames of 64 x 64."""
    return _store(tmp_path_factory.mktemp("motion") / "moving.zarr", _blob_frames(24, (1, 2)))


def _pysteps_directly(rate: np.ndarray, lead_steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """What pysteps computes for the last 3 frames: LK motion in dB, advection of the last."""
    db, _ = transformation.dB_transform(rate[-3:].astype(np.float64), threshold=0.1,
                                        zerovalue=-15.0)
    db[~np.isfinite(db)] = -15.0
    velocity = motion.get_method("LK")(db)
    advected = nowcasts.get_method("extrapolation")(
        np.nan_to_num(rate[-1].astype(np.float64)), velocity, lead_steps,
        extrap_kwargs={"outval": 0.0})
    return np.where(np.isnan(rate[-1]), np.nan, advected), velocity


def _cache(store: Path, tmp_path: Path, leads: tuple[int, ...] = (1, 2, 3),
           velocity: bool = True) -> MotionCache:
    leads = np.asarray(leads)
    frames = StoreFrames(store)
    windows = complete_windows(frames.times, 5, 4, leads)
    return MotionCache(frames, windows.context, 1, leads, velocity, tmp_path, progress=False)


def test_cached_extrapolation_equals_pysteps(synthetic_store: Path, tmp_path: Path) -> None:
    cache = _cache(synthetic_store, tmp_path)
    frames = StoreFrames(synthetic_store)
    for init in cache.init_frames[[0, len(cache.init_frames) // 2, -1]]:
        expected, velocity = _pysteps_directly(frames.read(np.arange(init - 2, init + 1),
                                                           slice(None), slice(None)), [1, 2, 3])
        extrapolated, cached_velocity = cache.fields(init)
        np.testing.assert_allclose(extrapolated, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cached_velocity, velocity, rtol=1e-5, atol=1e-5)


def test_pure_translation_gives_the_shifted_field(translating_store: Path,
                                                  tmp_path: Path) -> None:
    cache = _cache(translating_store, tmp_path)
    frames = StoreFrames(translating_store)
    init = int(cache.init_frames[5])
    extrapolated, velocity = cache.fields(init)
    inner = (slice(10, 54), slice(10, 54))
    np.testing.assert_allclose(velocity[0][inner].mean(), 2.0, atol=0.2)  # u: +x (columns)
    np.testing.assert_allclose(velocity[1][inner].mean(), 1.0, atol=0.2)  # v: +y (rows)
    for lead in range(3):
        later = frames.read(np.array([init + lead + 1]), slice(None), slice(None))[0]
        error = np.abs(extrapolated[lead] - later)[inner]
        assert error.max() < 0.15 * later.max(), f"lead {lead + 1}: max error {error.max()}"


def test_cache_is_reused_and_rebuilt_when_settings_or_store_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "s.zarr", _blob_frames(12, (0, 1)))
    first = _cache(store, tmp_path / "cache")
    assert first.path.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("optical flow recomputed for an unchanged cache")

    with monkeypatch.context() as patch:
        patch.setattr(motion_module, "motion_field", refuse)
        again = _cache(store, tmp_path / "cache")
    assert again.path == first.path

    other_leads = _cache(store, tmp_path / "cache", leads=(1, 2))
    assert other_leads.path != first.path and not first.path.exists()

    extra = make_dataset(_blob_frames(13, (0, 1))[12:], pd.date_range("2024-06-01T13:00",
                                                                         periods=1, freq="5min"),
                         open_store(store)["x"].values, open_store(store)["y"].values,
                         crs="EPSG:3035", source="test", step_minutes=5)
    append_frames(store, extra)
    grown = _cache(store, tmp_path / "cache", leads=(1, 2))
    assert grown.path != other_leads.path and len(grown.init_frames) == len(
        other_leads.init_frames) + 1


def test_lead_inputs_are_the_cached_fields_cropped_like_the_context(
    synthetic_store: Path, tmp_path: Path
) -> None:
    dm = NowcastDataModule([str(synthetic_store)], motion_inputs=True, motion_velocity=True,
                           motion_cache_dir=str(tmp_path), **KW)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    batch = dataset.__getitems__([0, 3])
    assert dm.lead_channel_names == ["extrapolated_rain", "extrapolated_mask", "motion_u",
                                     "motion_v"]
    assert batch["lead_inputs"].shape == (2, 3, 4, 48, 48)
    cache = dataset.domains[0].motion
    for k, index in enumerate([0, 3]):
        pick = dataset.pick(index)
        init = dataset.windows[0].context[pick.window, -1]
        extrapolated, velocity = cache.fields(init)
        rows, cols = slice(pick.row, pick.row + 48), slice(pick.col, pick.col + 48)
        planes = batch["lead_inputs"][k]
        observed = np.isfinite(extrapolated[:, rows, cols])
        np.testing.assert_array_equal(planes[:, 1].numpy(), observed)
        np.testing.assert_allclose(input_to_rate(planes[:, 0]).numpy(),
                                   np.nan_to_num(extrapolated[:, rows, cols]), atol=0.02)
        np.testing.assert_allclose(planes[0, 2:].numpy(), velocity[:, rows, cols] / 4.0,
                                   atol=1e-2)


def test_option_off_leaves_the_batches_and_network_as_before(synthetic_store: Path,
                                                             tmp_path: Path) -> None:
    plain = NowcastDataModule([str(synthetic_store)], **KW)
    motion_dm = NowcastDataModule([str(synthetic_store)], motion_inputs=True,
                                  motion_cache_dir=str(tmp_path), **KW)
    plain.setup("fit")
    motion_dm.setup("fit")
    a = plain.datasets["val"].__getitems__([0, 1])
    b = motion_dm.datasets["val"].__getitems__([0, 1])
    assert "lead_inputs" not in a and plain.num_lead_channels == 0
    assert motion_dm.num_lead_channels == 2
    for key in ("context", "target", "lead_times", "row", "col"):
        torch.testing.assert_close(a[key], b[key], equal_nan=True)
    net = MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                 pack_factor=1, max_lead_minutes=15, lead_step_minutes=5)
    assert not [name for name in net.state_dict() if "lead_encoder" in name or "fuse" in name]


def test_motion_inputs_need_three_context_frames(translating_store: Path) -> None:
    with pytest.raises(DataConfigError, match="context_frames >= 3"):
        NowcastDataModule([str(translating_store)], motion_inputs=True,
                          **{**KW, "context_frames": 2})


def _lead_net(lead_channels: int = 2) -> MetNet:
    torch.manual_seed(0)
    return MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                  pack_factor=1, lstm_hidden=16, downsampler_channels=(8, 16), heads=2,
                  max_lead_minutes=15, lead_step_minutes=5, lead_channels=lead_channels)


def test_network_uses_each_lead_its_own_inputs_after_one_encoding() -> None:
    net = _lead_net()
    x = torch.randn(2, 4, 2, 48, 48)
    planes = torch.rand(2, 3, 2, 48, 48)
    with torch.no_grad():
        for layer in (net.lead_encoder.project, net.head.fuse[0]):
            layer.weight.normal_(0, 0.1)  # trained-like, not the zero start
        latent = net.encode(x)
        base = net.decode(latent, LEADS, planes)
        changed = planes.clone()
        changed[:, 1] += 1.0  # only the second lead's inputs
        other = net.decode(latent, LEADS, changed)
    diff = (other - base).abs().amax(dim=(0, 2, 3, 4))
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0
    torch.testing.assert_close(net(x, LEADS, planes), base)


def test_network_refuses_missing_or_misshapen_lead_inputs() -> None:
    net, x = _lead_net(), torch.randn(1, 4, 2, 48, 48)
    with pytest.raises(ValueError, match="lead_inputs missing"):
        net(x, LEADS)
    with pytest.raises(ValueError, match="expected lead_inputs"):
        net(x, LEADS, torch.zeros(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="need conditioning='film'"):
        MetNet(input_channels=2, lead_channels=2, conditioning="onehot")


def test_lead_input_term_starts_at_zero_and_learns() -> None:
    net, x = _lead_net(), torch.randn(2, 4, 2, 48, 48)
    planes = torch.rand(2, 3, 2, 48, 48)
    assert net.lead_encoder(planes.flatten(0, 1)).abs().max() == 0  # latent as without
    net(x, LEADS, planes).logsumexp(dim=2).mean().backward()
    assert net.lead_encoder.project.weight.grad.abs().sum() > 0


def test_forecast_inputs_equal_the_training_cache(translating_store: Path,
                                                  tmp_path: Path) -> None:
    cache = _cache(translating_store, tmp_path)
    frames = StoreFrames(translating_store)
    init = int(cache.init_frames[4])
    rate = frames.read(np.arange(init - 3, init + 1), slice(None), slice(None))
    planes = lead_planes(rate, [1, 2, 3], velocity=True)
    expected = np.empty_like(planes)
    cache.read(init, slice(None), slice(None), expected)
    np.testing.assert_allclose(planes, expected, atol=2e-3)  # the cache holds float16


def test_forecast_dataset_runs_a_motion_network(translating_store: Path) -> None:
    from metnet.forecast import forecast_dataset

    net = _lead_net().eval()
    store = open_store(translating_store)
    init = store["time"].values[10]
    ds = forecast_dataset(net, store, [init], LEADS, thresholds=(1.0,))
    values = ds["probability_of_exceedance"].values
    assert values.shape == (1, 1, 3, 64, 64) and np.isfinite(values).all()


def test_extrapolation_skip_points_the_logits_at_the_extrapolated_bin() -> None:
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                 pack_factor=1, lstm_hidden=16, downsampler_channels=(8, 16), heads=2,
                 max_lead_minutes=15, lead_step_minutes=5, lead_channels=2,
                 extrapolation_skip=True)
    x = torch.randn(1, 4, 2, 48, 48)
    rate = torch.full((1, 3, 48, 48), 3.5)  # mm/h: bin [3, 4) of the compact bins
    planes = torch.stack([torch.log1p(rate) / 4.0, torch.ones_like(rate)], dim=2)
    planes[:, :, 1, :24] = 0.0  # no extrapolation in the upper half
    base = net(x, LEADS, planes)
    with torch.no_grad():
        net.head.skip.weight.copy_(100.0 * torch.eye(net.num_bins)[:, :, None, None])
    boosted = net(x, LEADS, planes)
    lower = 24 - 16  # first target row (target: context rows 16-31) with extrapolation
    winner = boosted[0, :, :, lower:, :].argmax(dim=1)
    assert (winner == net.bin_edges.index(3.0)).all()
    torch.testing.assert_close(boosted[0, :, :, :lower], base[0, :, :, :lower])
    with pytest.raises(ValueError, match="needs lead inputs"):
        MetNet(input_channels=2, extrapolation_skip=True)
