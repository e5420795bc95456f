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
from torch import Tensor, nn

from metnet.data import motion as motion_module
from metnet.data.augment import FLIP_COLS, FLIP_ROWS, TRANSPOSE, transform
from metnet.data.datamodule import NowcastDataModule
from metnet.data.frames import StoreFrames
from metnet.data.motion import VELOCITY_SCALE, MotionCache, lead_planes
from metnet.data.windows import DataConfigError, complete_windows
from metnet.distribution import (
    RainRateDistribution,
    compact_bins,
    masked_cross_entropy,
    rain_to_bin,
)
from metnet.io.store import append_frames, make_dataset, open_store, write_store
from metnet.models import MetNet
from metnet.models.lead_inputs import LeadInputEncoder, vector_channels
from metnet.models.prior import FLOOR, PIN_MARGIN, ExtrapolationPrior, pin_median
from metnet.nowcasts import extrapolation
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


def test_cached_extrapolation_equals_pysteps(synthetic_store: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extrapolation, "MOTION_GRID", 1)  # pysteps' dense field
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
                           cache_dir=str(tmp_path), **KW)
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
                                  cache_dir=str(tmp_path), **KW)
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


def test_prior_histograms_are_exact_for_neighbourhoods_of_thirty_thousand_pixels() -> None:
    """A 14 h lead gives a 179 x 179 px neighbourhood (32041 members): every member counts
    (in torch's form too, whose int16 running sums pass their range), and the median of the
    centred histogram is that of the members."""
    prior = ExtrapolationPrior(compact_bins(dry=True), max_lead_minutes=880)
    assert prior.margin == 89
    gen = torch.Generator().manual_seed(2)
    side = 2 * prior.margin + 8
    rate = torch.rand(1, side, side, generator=gen) ** 4 * 30
    planes = torch.stack([torch.log1p(rate) / 4.0, torch.ones_like(rate)], dim=1)
    histograms = prior.histograms(planes, torch.tensor([880]))
    edges, k, r = prior.edges, len(prior.edges) - 1, prior.margin
    for y, x in [(0, 0), (3, 5), (7, 7)]:
        window = rate[0, y:y + 2 * r + 1, x:x + 2 * r + 1].reshape(-1)
        plain = torch.bincount(rain_to_bin(window, edges), minlength=k) / len(window)
        median = int((plain.cumsum(0) < 0.5).sum())
        shift = int(rain_to_bin(rate[0, r + y, r + x], edges)) - median
        centred = torch.zeros(k).index_add_(0, (torch.arange(k) + shift).clamp(0, k - 1), plain)
        torch.testing.assert_close(histograms[0, 1, :, y, x], plain, atol=1e-6, rtol=0)
        torch.testing.assert_close(histograms[0, 0, :, y, x], centred, atol=1e-6, rtol=0)
    torch_form = torch.empty_like(histograms)  # other devices: int16 sums that wrap around
    prior._neighbourhood_histograms(rain_to_bin(input_to_rate(planes[:, 0]).clamp_min(0),
                                                edges).to(torch.int16), [r], torch_form)
    assert torch.equal(torch_form, histograms)


@pytest.mark.parametrize("wide", [None, (0.0, 0.2)])
@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize("dry", [True, False])
def test_prior_kernels_equal_the_torch_form_to_the_bit(dry: bool, pinned: bool,
                                                       wide: tuple[float, float] | None) -> None:
    """The CPU kernels (numba) against the torch operations other devices run: every lead's
    radius, dry areas, unknown pixels, errors of both signs, a domain wider than tall, with
    and without the wide neighbourhood."""
    prior = ExtrapolationPrior(compact_bins(dry=dry), max_lead_minutes=60, error=True,
                               pinned=pinned, wide=wide)
    gen = torch.Generator().manual_seed(4)
    leads = torch.arange(5, 65, 5)
    shape = (len(leads), 2 * prior.margin + 23, 2 * prior.margin + 41)
    rate = torch.rand(shape, generator=gen) ** 3 * 40 * (torch.rand(shape, generator=gen) > 0.5)
    known = (torch.rand(shape, generator=gen) > 0.05).float()
    error = torch.randn(shape, generator=gen) * 0.2 * (torch.rand(shape, generator=gen) > 0.7)
    planes = torch.stack([torch.log1p(rate) / 4.0, known, error], dim=1)
    kernels = prior.histograms(planes, leads)
    value = torch.where(known > 0.5, planes[:, 0], 0.0)
    rate_in = torch.where(known > 0.5, input_to_rate(planes[:, 0]), 0.0).clamp_min(0)
    bins = rain_to_bin(rate_in, prior.edges).to(torch.int16)
    radii = [int(1 + lead / 10) for lead in leads.tolist()]
    expected = torch.empty_like(kernels)
    wide_radii = None if wide is None else [int(lead * 0.2) for lead in leads.tolist()]
    prior._neighbourhood_histograms(bins, radii, expected, wide_radii)
    if wide is not None:
        assert prior.margin == 12 and wide_radii[0] == radii[0] < wide_radii[-1]
        assert not torch.equal(expected[:, 2], expected[:, 1])
    prior._error_histograms(value, torch.where(known > 0.5, error, 0.0), expected[:, -1])
    assert kernels[:, 1, 0].lt(1).any() and kernels[:, -1, 0].lt(1).any()  # rain in reach
    assert torch.equal(kernels, expected)


def _random_planes(prior: ExtrapolationPrior, leads: Tensor, size: tuple[int, int], seed: int,
                   wet: float, unknown: float, error_scale: float) -> tuple[Tensor, Tensor]:
    """Random rain rates (N, H, W) mm/h over a ``size`` target plus the prior's margin, a
    fraction ``wet`` of the pixels wet and ``unknown`` unknown, and the per-lead planes
    (N, 3, H, W) made of them with Gaussian errors of ``error_scale``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (len(leads), 2 * prior.margin + size[0], 2 * prior.margin + size[1])
    rate = torch.rand(shape, generator=gen) ** 3 * 40 * (torch.rand(shape, generator=gen) < wet)
    known = (torch.rand(shape, generator=gen) >= unknown).float()
    errors = torch.randn(shape, generator=gen) * error_scale
    return rate, torch.stack([torch.log1p(rate) / 4.0, known, errors], dim=1)


@pytest.mark.parametrize(("pinned", "decisions", "pin_margin", "pin_minutes", "wide"),
                         [(False, None, 1e-3, None, None), (True, None, 1e-3, None, None),
                          (True, [1.0, 5.0], 0.05, 10.0, None),
                          (False, None, 1e-3, None, (0.0, 0.2)),
                          (True, [1.0], 0.05, 15.0, (0.0, 0.2))])
@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("error", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_the_prior_without_gradients_is_its_mixture_of_histograms(
        sparse: bool, error: bool, dry: bool, pinned: bool,
        decisions: list[float] | None, pin_margin: float, pin_minutes: float | None,
        wide: tuple[float, float] | None) -> None:
    """Inference on a CPU makes the prior's logits one pixel at a time, the bins last in
    memory: the mixture of the histograms up to float32 rounding (unknown pixels, errors of
    both signs, with and without a dry bin, pinned or not, at every edge or at decision
    thresholds with a wider pin margin that falls with lead time, with and without the wide
    neighbourhood; ``sparse``: scattered rain and errors, as on a real domain, so that most
    windows are dry, some of them with a wet error ensemble or a wet wide neighbourhood);
    with gradients, the mixture itself."""
    prior = ExtrapolationPrior(compact_bins(dry=dry), max_lead_minutes=60, error=error,
                               pinned=pinned, decisions=decisions, pin_margin=pin_margin,
                               pin_minutes=pin_minutes, wide=wide)
    leads = torch.tensor([5.0, 30.0, 60.0])
    rate, planes = _random_planes(prior, leads, (19, 26), seed=5,
                                  wet=0.005 if sparse else 0.4, unknown=0.05, error_scale=0.5)
    if sparse:
        # the last step's errors are where the rain was, not where it is extrapolated
        planes[:, 2] *= torch.rand(rate.shape, generator=torch.Generator().manual_seed(6)) < 0.01
        histograms = prior.histograms(planes, leads)
        all_dry = histograms[:, 1, 0] == 1
        assert all_dry.any() and not all_dry.all()
        if wide is not None:
            assert (all_dry & (histograms[:, 2, 0] < 1)).any()
            all_dry &= histograms[:, 2, 0] == 1
        if error:
            assert (all_dry & (histograms[:, -1, 0] < 1)).any()
    mix = torch.randn(len(leads), prior.mix_planes, 19, 26,
                      generator=torch.Generator().manual_seed(5))
    expected = prior(mix, prior.histograms(planes, leads), leads)
    with torch.inference_mode():
        fused = prior.logits(mix, planes, leads)
    if pinned:  # bins made as differences of cumulative sums: float32 rounding of ~1e-7
        torch.testing.assert_close(fused.exp(), expected.exp(), rtol=0, atol=1e-6)
        assert fused.exp().min() >= 0.99 * FLOOR  # the floor comes after the pin
    else:
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    if sparse:  # pixels whose every ensemble is dry, written directly: the floor too
        quiet = all_dry & (histograms[:, -1, 0] == 1) if error else all_dry
        assert quiet.any()
        torch.testing.assert_close(fused.movedim(1, -1)[quiet], expected.movedim(1, -1)[quiet],
                                   rtol=0, atol=1e-4)
    assert fused.permute(0, 2, 3, 1).is_contiguous()
    # given the exponentials of a head's corrections (blocks of 1 px), the softmax of the
    # corrected logits, each pixel normalised in the kernel
    corrections = 3 * torch.randn(len(leads), 19, 26, 1, 1, len(prior.edges) - 1,
                                  generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        corrected = prior.mixture(mix, planes, leads, factors=corrections.exp())
    torch.testing.assert_close(
        corrected, torch.softmax(fused + corrections[:, :, :, 0, 0].movedim(-1, 1), dim=1),
        rtol=1e-4, atol=1e-6)
    with torch.inference_mode(), pytest.raises(ValueError, match="corrections of"):
        prior.mixture(mix, planes, leads, factors=corrections.exp()[:, 1:])  # no bounds checked
    if prior.mix_planes:
        trained = mix.clone().requires_grad_()
        prior.logits(trained, planes, leads).sum().backward()
        assert trained.grad is not None and trained.grad.abs().sum() > 0


@pytest.mark.parametrize("error", [True, False])
def test_a_pinned_prior_decides_as_extrapolation_and_keeps_the_neighbourhood_elsewhere(
        error: bool) -> None:
    """The pinned prior's median is the pixel's own extrapolated bin: P(R > t) >= 0.5 where
    extrapolation says rain above t and below it elsewhere, at every bin edge t; quantiles
    already on the right side of the pixel's value are the mixture's (here, untrained,
    the plain neighbourhood's, or the neighbourhood and the error ensemble's)."""
    prior = ExtrapolationPrior(compact_bins(dry=True), max_lead_minutes=60, error=error,
                               pinned=True)
    leads = torch.tensor([5.0, 30.0, 60.0])
    rate, planes = _random_planes(prior, leads, (20, 20), seed=6, wet=0.5, unknown=0.0,
                                  error_scale=0.3)
    with torch.inference_mode():
        logits = prior.logits(torch.zeros(len(leads), prior.mix_planes, 20, 20), planes, leads)
    dist = RainRateDistribution(logits, prior.edges, dim=1)
    m = prior.margin
    own = rate[:, m:m + 20, m:m + 20]
    own_bin = rain_to_bin(own, prior.edges)
    for j, t in enumerate(prior.edges[1:-1].tolist(), start=1):  # P(R > t): bins j and up
        assert torch.equal(dist.exceedance(t) >= 0.5, own_bin >= j)
    histograms = prior.histograms(planes, leads)
    weights = prior._weights(torch.zeros(len(leads), prior.mix_planes, 20, 20), leads)
    mixture = (histograms * weights[:, :, None]).sum(1).cumsum(1)
    pinned = torch.softmax(logits, 1).cumsum(1)
    below = torch.arange(len(prior.edges) - 1)[None, :, None, None] < own_bin[:, None]
    kept = torch.where(below, mixture < 0.499, mixture > 0.501)
    assert kept.float().mean() > 0.5  # most bins lie on the right side already
    torch.testing.assert_close(pinned[kept], mixture[kept], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("decisions", "pin_margin", "pin_minutes"),
                         [([1.0], 1e-3, None), ([0.1, 1.0, 5.0], 1e-3, None),
                          ([1.0], 0.05, None), ([1.0], 0.05, 10.0)])
def test_a_prior_pinned_at_decision_thresholds_changes_only_those_decisions(
        decisions: list[float], pin_margin: float, pin_minutes: float | None) -> None:
    """Pinned at decision thresholds, the prior says P(R > t) >= 0.5 + the lead's pin margin
    exactly where extrapolation says rain above t, and at most 0.5 - the margin elsewhere,
    for each decision threshold t (with ``pin_minutes``, the margin falls as 1 / lead
    after it); a pixel whose mixture already decides so, by more than the margin, keeps
    the mixture's distribution, and between the thresholds the neighbourhood's quantiles
    stay where they are (the median is not pulled onto the pixel's own value)."""
    edges = compact_bins(dry=True)
    prior = ExtrapolationPrior(edges, max_lead_minutes=60, error=True, pinned=True,
                               decisions=decisions, pin_margin=pin_margin,
                               pin_minutes=pin_minutes)
    leads = torch.tensor([5.0, 30.0, 60.0])
    rate, planes = _random_planes(prior, leads, (20, 20), seed=7, wet=0.5, unknown=0.0,
                                  error_scale=0.3)
    zero = torch.zeros(len(leads), prior.mix_planes, 20, 20)
    with torch.inference_mode():
        logits = prior.logits(zero, planes, leads)
    m = prior.margin
    own = rate[:, m:m + 20, m:m + 20]
    histograms = prior.histograms(planes, leads)
    mixture = (histograms * prior._weights(zero, leads)[:, :, None]).sum(1)
    plain = RainRateDistribution((mixture + FLOOR).log(), prior.edges, dim=1)
    agrees = torch.ones_like(own, dtype=torch.bool)
    margins = torch.full((3, 1, 1), pin_margin)
    if pin_minutes is not None:
        margins = pin_margin * torch.tensor([1.0, 1 / 3, 1 / 6])[:, None, None]  # 5, 30, 60 min
    torch.testing.assert_close(prior.pin_margins(leads), margins.flatten())
    for t in decisions:
        probability = RainRateDistribution(logits, prior.edges, dim=1).exceedance(t)
        assert torch.equal(probability >= 0.5, own >= t)
        clear = 0.5 + margins - 1e-5  # the floor's share aside
        assert torch.equal(probability >= clear, own >= t)
        assert torch.equal(probability <= 1 - clear, own < t)
        # where the mixture decides as extrapolation, clear of the pin's margin
        agrees &= torch.where(own >= t, plain.exceedance(t) >= 0.501 + margins,
                              plain.exceedance(t) <= 0.499 - margins)
    assert 0 < agrees.float().mean() < 1  # some pixels pinned, others kept
    torch.testing.assert_close(torch.softmax(logits, 1).movedim(1, -1)[agrees],
                               mixture.movedim(1, -1)[agrees], atol=1e-5, rtol=0)
    moved = RainRateDistribution(logits, prior.edges, dim=1).exceedance(0.3) >= 0.5
    own_median = own >= 0.3
    assert not torch.equal(moved, own_median)  # not the median pinned at every edge


@pytest.mark.parametrize("pinned", [False, True])
def test_an_untrained_wide_neighbourhood_weighs_as_much_as_the_plain_one(pinned: bool) -> None:
    """Untrained (mixture logits 0), the wide neighbourhood and the plain one weigh the same,
    the error ensemble keeps its share 0.5 * min(1, 5 min / lead) and the neighbourhoods
    share the rest evenly; a pinned prior's own-bin slot weighs nothing; the head's mixture
    logits move the wide and the error weights in that order."""
    prior = ExtrapolationPrior(compact_bins(dry=True), max_lead_minutes=60, error=True,
                               pinned=pinned, wide=(0.0, 0.2))
    leads = torch.tensor([5.0, 30.0, 60.0])
    weights = prior._weights(torch.zeros(3, prior.mix_planes, 2, 2), leads)[..., 0, 0]
    share = 0.5 * torch.tensor([1.0, 1 / 6, 1 / 12])
    rest = (1 - share) / (2 if pinned else 3)  # (centred,) plain and wide
    own_or_centred = torch.zeros(3) if pinned else rest
    torch.testing.assert_close(weights, torch.stack([own_or_centred, rest, rest, share], 1))
    mix = torch.zeros(3, prior.mix_planes, 2, 2)
    mix[:, -2] = 1.0  # the wide neighbourhood's logit
    moved = prior._weights(mix, leads)[..., 0, 0]
    assert (moved[:, 2] > weights[:, 2]).all() and (moved[:, 1] < weights[:, 1]).all()
    with pytest.raises(ValueError, match="wide radius"):
        ExtrapolationPrior(compact_bins(dry=True), max_lead_minutes=60, wide=(-1.0, 0.25))
    with pytest.raises(ValueError, match="prior's radius must be two numbers"):
        ExtrapolationPrior(compact_bins(dry=True), max_lead_minutes=60, radius=(-1.0, 0.1))


def test_the_pin_works_in_float32_whatever_the_dtype_of_the_probabilities() -> None:
    """Under bf16 autocast the mixture may come in bfloat16, where 1/2 - 0.001 rounds to
    1/2: the pin is made in float32, so the median still moves into the pixel's bin."""
    probs = torch.full((1, 4, 1, 1), 0.25, dtype=torch.bfloat16)  # median at the bin 1 / 2 edge
    own = torch.zeros(1, 4, 1, 1)
    own[0, 2] = 1.0  # the pixel's own value in bin 2
    pinned = pin_median(probs, own)
    assert pinned.dtype == torch.float32
    assert float(pinned[0, :2].sum()) <= 0.5 - PIN_MARGIN + 1e-6
    margins = torch.tensor([0.05])[:, None, None, None]
    assert float(pin_median(probs, own, margin=margins)[0, :2].sum()) <= 0.45 + 1e-6


def test_decision_thresholds_must_be_bin_edges() -> None:
    with pytest.raises(ValueError, match=r"not at \[1.2\]"):
        ExtrapolationPrior(compact_bins(dry=True), 60, pinned=True, decisions=[1.0, 1.2])
    with pytest.raises(ValueError, match="pinned"):
        ExtrapolationPrior(compact_bins(dry=True), 60, decisions=[1.0])
    for margin in (0.0, 0.5):
        with pytest.raises(ValueError, match=r"pin margin must lie in \(0, 1/2\)"):
            ExtrapolationPrior(compact_bins(dry=True), 60, pinned=True, pin_margin=margin)
    with pytest.raises(ValueError, match="pin_minutes must be positive"):
        ExtrapolationPrior(compact_bins(dry=True), 60, pinned=True, pin_minutes=0)


@pytest.mark.parametrize("pack", [1, 2])
def test_lead_input_encoder_is_space_to_depth_then_a_projection(pack: int) -> None:
    """Each of the 8 x 8 input pixels under a latent pixel has its own projection weights,
    as ``PixelUnshuffle`` then a 1x1 convolution would give them (with ``pack``, the stem
    runs on the planes packed ``pack`` x ``pack``)."""
    torch.manual_seed(0)
    encoder = LeadInputEncoder(channels=4, dim=32, factor=8, pack=pack)
    nn.init.normal_(encoder.project.weight)
    x = torch.randn(3, 4, 40, 48)
    packed = nn.PixelUnshuffle(8 // pack)(encoder.stem(nn.PixelUnshuffle(pack)(x)))
    expected = encoder.project(packed).permute(0, 2, 3, 1)
    torch.testing.assert_close(encoder(x), expected, rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize("half_resolution", [False, True])
def test_an_untrained_prior_network_forecasts_the_probabilistic_extrapolation(
        half_resolution: bool) -> None:
    """With the prior, the untrained network's distribution at a target pixel is the even
    mixture of the bin histogram of its neighbourhood of the extrapolated field and of that
    histogram moved along the bins to have its median in the pixel's own bin; training
    moves it."""
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                 pack_factor=1, lstm_hidden=16, downsampler_channels=(8, 16), heads=2,
                 max_lead_minutes=30, lead_step_minutes=5, lead_channels=2, prior=True,
                 dry_bin=True, half_resolution=half_resolution)
    gen = torch.Generator().manual_seed(1)
    rate = torch.rand(1, 3, 48, 48, generator=gen) ** 3 * 20  # mm/h, many near-dry pixels
    rate[..., :24] = 0.0
    planes = torch.stack([torch.log1p(rate) / 4.0, torch.ones_like(rate)], dim=2)
    logits = net(torch.randn(1, 4, 2, 48, 48), LEADS, planes)
    edges = torch.tensor(net.bin_edges)
    k = len(edges) - 1
    for j, lead in enumerate(LEADS):
        r = int(1 + lead / 10)
        for y, x in np.ndindex(16, 16):  # every target pixel (context rows 16-31)
            window = rate[0, j, 16 + y - r:17 + y + r, 16 + x - r:17 + x + r].reshape(-1)
            plain = torch.bincount(rain_to_bin(window, edges), minlength=k) / len(window)
            median = int((plain.cumsum(0) < 0.5).sum())
            shift = int(rain_to_bin(rate[0, j, 16 + y, 16 + x], edges)) - median
            centred = torch.zeros(k).index_add_(0, (torch.arange(k) + shift).clamp(0, k - 1),
                                                plain)
            got = torch.softmax(logits[0, j, :, y, x].double(), 0)
            torch.testing.assert_close(got.float(), 0.5 * plain + 0.5 * centred, atol=1e-5,
                                       rtol=0)
            exceed = RainRateDistribution(centred.clamp_min(1e-12).log(), edges, dim=0)
            for t in (0.1, 1.0, 4.0):  # the centred part decides as extrapolation does
                assert (exceed.exceedance(t) > 0.5) == bool(rate[0, j, 16 + y, 16 + x] > t)
    target = rate[:, :, 16:32, 16:32] * 1.5
    masked_cross_entropy(logits, target, edges, dim=2).backward()
    assert net.head.logits.weight.grad.abs().sum() > 0  # the correction and mixture learn
    with pytest.raises(ValueError, match="needs per-lead inputs"):
        MetNet(input_channels=2, prior=True)
    with pytest.raises(ValueError, match="reaches 7 px beyond the target; the context gives 4"):
        MetNet(input_channels=2, input_size=24, target_size=16, pack_factor=1,
               lead_channels=2, prior=True, max_lead_minutes=60, lead_step_minutes=5)


@pytest.mark.parametrize("half_resolution", [False, True])
def test_an_untrained_pinned_prior_network_decides_as_extrapolation(
        half_resolution: bool) -> None:
    """With ``prior_pinned`` (no mixture logits without the error ensemble), the untrained
    network says P(R > t) > 0.5 exactly where the extrapolated rate is above t, for
    thresholds at bin edges, and learns."""
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                 pack_factor=1, lstm_hidden=16, downsampler_channels=(8, 16), heads=2,
                 max_lead_minutes=30, lead_step_minutes=5, lead_channels=2, prior=True,
                 prior_pinned=True, dry_bin=True, half_resolution=half_resolution)
    assert net.head.prior.mix_planes == 0
    with pytest.raises(ValueError, match="prior_pinned needs prior"):
        MetNet(input_channels=2, prior_pinned=True)
    gen = torch.Generator().manual_seed(1)
    rate = torch.rand(1, 3, 48, 48, generator=gen) ** 3 * 20
    rate[..., :24] = 0.0
    planes = torch.stack([torch.log1p(rate) / 4.0, torch.ones_like(rate)], dim=2)
    logits = net(torch.randn(1, 4, 2, 48, 48), LEADS, planes)
    dist = RainRateDistribution(logits.float(), torch.tensor(net.bin_edges), dim=2)
    own = rate[:, :, 16:32, 16:32]
    for t in (0.1, 1.0, 4.0):
        assert torch.equal(dist.exceedance(t) > 0.5, own > t)
    masked_cross_entropy(logits, own * 1.5, torch.tensor(net.bin_edges), dim=2).backward()
    assert net.head.logits.weight.grad.abs().sum() > 0


def _augmented_pair(store: Path, cache: Path) -> tuple[NowcastDataModule, NowcastDataModule]:
    """The same training samples, as they are and under random symmetries of the square."""
    settings = dict(KW, motion_inputs=True, motion_velocity=True, motion_error=True,
                    cache_dir=str(cache), split_fractions=(0.4, 0.3, 0.3), patches_per_window=8)
    plain = NowcastDataModule([str(store)], **settings)
    turned = NowcastDataModule([str(store)], **settings, augment=True)
    for dm in (plain, turned):
        dm.setup("fit")
    return plain, turned


def test_augmented_samples_are_the_same_samples_turned(translating_store: Path,
                                                       tmp_path: Path) -> None:
    plain, turned = _augmented_pair(translating_store, tmp_path)
    seen = set()
    for index in range(len(turned.datasets["train"])):
        key = (1, index)
        k = turned.datasets["train"].pick(key).symmetry
        a, b = plain.datasets["train"][key], turned.datasets["train"][key]
        seen.add(k)
        assert (a["row"], a["col"]) == (b["row"], b["col"])
        for name in ("context", "target", "target_mask"):
            np.testing.assert_array_equal(b[name].numpy(), transform(a[name].numpy(), k))
        fields = transform(a["lead_inputs"].numpy(), k)  # rain, mask, error, u, v
        np.testing.assert_array_equal(b["lead_inputs"][:, :3].numpy(), fields[:, :3])
        u, v = fields[:, 3], fields[:, 4]  # vectors turn with the field
        if k & TRANSPOSE:
            u, v = v, u
        np.testing.assert_array_equal(b["lead_inputs"][:, 3].numpy(), -u if k & FLIP_COLS else u)
        np.testing.assert_array_equal(b["lead_inputs"][:, 4].numpy(), -v if k & FLIP_ROWS else v)
    assert len(seen) >= 5  # the symmetries are drawn, not fixed
    for index in range(len(turned.datasets["val"])):  # evaluation samples: never turned
        np.testing.assert_array_equal(turned.datasets["val"][index]["context"].numpy(),
                                      plain.datasets["val"][index]["context"].numpy())


def test_the_extrapolation_input_of_a_turned_sample_extrapolates_its_turned_context(
        translating_store: Path, tmp_path: Path) -> None:
    """Rotating the frames and then extrapolating gives what extrapolating and then rotating
    gives, within interpolation error: the augmented inputs are physically consistent."""
    _, turned = _augmented_pair(translating_store, tmp_path)
    inner = (slice(None), slice(12, 36), slice(12, 36))  # away from the patch's inflow edges
    checked = set()
    for index in range(len(turned.datasets["train"])):
        sample = turned.datasets["train"][(2, index)]
        k = turned.datasets["train"].pick((2, index)).symmetry
        context = sample["context"].numpy()
        rate = np.where(context[:, 1] > 0.5, input_to_rate(sample["context"][:, 0]).numpy(),
                        np.nan)
        expected, velocity = _pysteps_directly(rate, [1, 2, 3])
        got = input_to_rate(sample["lead_inputs"][:, 0]).numpy()
        error = np.abs(got - expected)[inner]
        assert error.max() < 0.15 * np.nanmax(expected), (k, error.max())
        turned_velocity = sample["lead_inputs"][0, 3:].numpy() * VELOCITY_SCALE
        np.testing.assert_allclose(  # median (u, v) in pixels per step
            np.median(turned_velocity[:, 12:36, 12:36].reshape(2, -1), axis=1),
            np.median(velocity[:, 12:36, 12:36].reshape(2, -1), axis=1), atol=0.3)
        checked.add(k)
    assert len(checked) >= 5


def test_the_former_motion_cache_dir_still_places_the_cache_with_a_note(
    synthetic_store: Path, tmp_path: Path
) -> None:
    # a FutureWarning: jsonargparse and Python's defaults hide a DeprecationWarning
    with pytest.warns(FutureWarning, match="motion_cache_dir is deprecated.*cache_dir"):
        dm = NowcastDataModule([str(synthetic_store)], motion_inputs=True,
                               motion_cache_dir=str(tmp_path / "old"), **KW)
    dm.setup("fit")
    assert list((tmp_path / "old").glob(f"*/{synthetic_store.stem}.motion-*.zarr"))
    with pytest.raises(DataConfigError, match="motion_cache_dir is the former name of "
                       "data.cache_dir: give only data.cache_dir"):
        NowcastDataModule([str(synthetic_store)], motion_inputs=True, cache_dir=str(tmp_path),
                          motion_cache_dir=str(tmp_path / "old"), **KW)


def test_same_named_stores_keep_their_own_caches_in_one_cache_dir(tmp_path: Path) -> None:
    rate = _blob_frames(8, (0, 1))
    first = _cache(_store(tmp_path / "a" / "radar.zarr", rate), tmp_path / "cache")
    second = _cache(_store(tmp_path / "b" / "radar.zarr", rate[::-1].copy()),
                    tmp_path / "cache")
    assert first.path.parent != second.path.parent
    assert first.path.exists() and second.path.exists()


def test_the_error_plane_is_what_extrapolation_missed_last_step(translating_store: Path,
                                                                tmp_path: Path) -> None:
    """Blobs that only move leave no error (to within interpolation at their edges); rain
    that appears in the last frame is its whole input-transform value; unknown pixels 0.
    The cache keeps the plane forecasts compute, in channel 2 of every lead."""
    frames = StoreFrames(translating_store)
    rate = frames.read(np.arange(6, 10), slice(None), slice(None))
    velocity = motion_module.motion_field(rate)
    moving = motion_module.extrapolation_error(rate, velocity)
    assert np.abs(moving).mean() < 0.01
    grown = rate.copy()
    grown[-1, 30:34, 5:9] = 8.0  # a new cell, where the blobs are not
    grown[-1, :2] = np.nan
    error = motion_module.extrapolation_error(grown, velocity)
    np.testing.assert_allclose(error[31, 6], np.log1p(8.0) / 4.0, atol=0.02)
    assert (error[:2] == 0).all()

    cache = MotionCache(frames, complete_windows(frames.times, 5, 4, np.array([1, 2])).context,
                        1, np.array([1, 2]), velocity=True, cache_dir=tmp_path, progress=False,
                        error=True)
    init = int(cache.init_frames[3])
    rate = frames.read(np.arange(init - 3, init + 1), slice(None), slice(None))
    planes = lead_planes(rate, [1, 2], velocity=True, error=True)
    cached = np.empty_like(planes)
    cache.read(init, slice(None), slice(None), cached)
    np.testing.assert_allclose(planes, cached, atol=2e-3)
    expected = motion_module.extrapolation_error(rate, motion_module.motion_field(rate))
    for lead in range(2):
        np.testing.assert_allclose(planes[lead, 2], expected)
    assert vector_channels(5) == (3, 4)
    assert vector_channels(3) is None


def test_the_error_ensemble_is_the_pixel_moved_by_its_neighbours_errors() -> None:
    """No error anywhere: a point mass at the pixel's own bin. One neighbour's error of d
    moves a ninth of the mass to the bin of the pixel's value plus d (input transform)."""
    edges = compact_bins(dry=True)
    prior = ExtrapolationPrior(edges, max_lead_minutes=10, error=True)
    m = prior.margin
    rate = torch.full((1, 2 * m + 3, 2 * m + 3), 2.0)
    value = torch.log1p(rate) / 4.0
    error = torch.zeros_like(value)
    planes = torch.stack([value, torch.ones_like(value), error], dim=1)
    histograms = prior.histograms(planes, torch.tensor([5]))
    assert histograms.shape == (1, 3, len(edges) - 1, 3, 3)
    own = int(rain_to_bin(torch.tensor(2.0), edges))
    assert histograms[0, 2, own].eq(1).all()
    error[0, m + 1, m + 2] = 0.3  # right of the centre pixel
    planes = torch.stack([value, torch.ones_like(value), error], dim=1)
    centre = prior.histograms(planes, torch.tensor([5]))[0, 2, :, 1, 1]
    moved = int(rain_to_bin(input_to_rate(value[0, 0, 0] + 0.3), edges))
    assert moved != own
    torch.testing.assert_close(centre[moved], torch.tensor(1 / 9))
    torch.testing.assert_close(centre[own], torch.tensor(8 / 9))


def test_an_untrained_network_mixes_the_error_ensemble_in_by_lead() -> None:
    """With prior_error, the untrained mixture gives the error ensemble half the mass up to
    5 min of lead and 5 / lead of that half after it; the neighbourhoods share the rest."""
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=4, input_size=48, target_size=16,
                 pack_factor=1, lstm_hidden=16, downsampler_channels=(8, 16), heads=2,
                 max_lead_minutes=30, lead_step_minutes=5, lead_channels=3, prior=True,
                 prior_error=True, dry_bin=True)
    gen = torch.Generator().manual_seed(1)
    rate = torch.rand(2, 48, 48, generator=gen) ** 3 * 20
    planes = torch.stack([torch.log1p(rate) / 4.0, torch.ones_like(rate),
                          torch.randn(2, 48, 48, generator=gen) * 0.2], dim=1)[None]
    leads = torch.tensor([5, 20])
    with torch.no_grad():
        probs = net(torch.randn(1, 4, 2, 48, 48), leads, planes).softmax(dim=2)[0]
    crop = planes[0, :, :, 16 - net.head.margin:32 + net.head.margin,
                  16 - net.head.margin:32 + net.head.margin]
    centred, plain, error = net.head.prior.histograms(crop, leads).unbind(1)
    for i, share in enumerate((0.5, 0.125)):
        expected = share * error[i] + (1 - share) / 2 * (centred[i] + plain[i])
        torch.testing.assert_close(probs[i], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prior_error needs prior: true and the data's "
                                         "motion_error"):
        MetNet(input_channels=2, lead_channels=4, prior=True, prior_error=True)
