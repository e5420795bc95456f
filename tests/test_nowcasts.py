"""The nowcast methods registry: one call shape for every method (as pysteps'
``test_interfaces.py`` checks for its own), and what each method returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pysteps import motion
from pysteps import nowcasts as pysteps_nowcasts

from metnet import nowcasts
from metnet.calibration import Calibration
from metnet.data.motion import lead_planes
from metnet.distribution import RainRateDistribution
from metnet.forecast import read_context
from metnet.io.store import open_store
from metnet.models import MetNet
from metnet.nowcasts import model as model_method
from metnet.nowcasts.extrapolation import MOTION_GRID, advect, motion_field, to_db
from metnet.nowcasts.model import frames_needed
from metnet.verification import ensemble_crps

LEADS = [5, 15, 30]
MEMBERS = 3


@pytest.fixture(scope="module")
def context(tiny_store) -> np.ndarray:
    """(T, H, W) mm/h: the 4 frames ending 2024-06-01T12:25 of the tiny store."""
    return read_context(open_store(tiny_store), np.datetime64("2024-06-01T12:25", "ns"), 4)


def options(net) -> dict:
    """One set of options for every method (each takes what it needs)."""
    return {"step_minutes": 5, "km_per_pixel": 1.0, "members": MEMBERS, "seed": 0, "net": net}


def test_the_registry_holds_the_baselines_and_the_model():
    assert set(nowcasts.KINDS) == {"persistence", "extrapolation", "steps", "neighbourhood",
                                   "model"}
    with pytest.raises(ValueError, match="unknown nowcast method 'optical_flow'; known: "):
        nowcasts.get_method("optical_flow")


@pytest.mark.parametrize("name", list(nowcasts.KINDS))
def test_every_method_takes_rain_rate_and_lead_minutes(name, context, tiny_net):
    """Past rain rate (T, H, W) mm/h and lead times in minutes in; (L, H, W), (M, L, H, W)
    or a distribution of batch shape (L, H, W) out, by the method's kind; finite wherever
    the last frame is observed."""
    assert context.shape[0] >= frames_needed(tiny_net)
    out = nowcasts.get_method(name)(context, LEADS, **options(tiny_net))
    kind, field = nowcasts.KINDS[name], (len(LEADS), *context.shape[1:])
    observed = np.isfinite(context[-1])
    if kind == "distribution":
        assert out.batch_shape == field
        assert isinstance(out, RainRateDistribution) == (name == "model")
        values = out.mean().numpy()
        for statistic in (out.exceedance(1.0), out.quantile(0.5),
                          out.crps(torch.zeros(field, dtype=torch.float64))):
            assert statistic.shape == field and torch.isfinite(statistic[:, observed]).all()
    else:
        assert isinstance(out, np.ndarray)
        assert out.shape == ((MEMBERS, *field) if kind == "ensemble" else field)
        values = out.reshape(-1, *field)
        assert np.isnan(values[..., ~observed]).all()  # nothing outside the coverage
    assert np.isfinite(values[..., observed]).all() and (values[..., observed] >= 0).all()


def test_persistence_repeats_the_last_frame_for_numpy_and_torch(context):
    persistence = nowcasts.get_method("persistence")
    np.testing.assert_array_equal(persistence(context, LEADS), np.stack([context[-1]] * 3))
    torch.testing.assert_close(persistence(torch.from_numpy(context), LEADS),
                               torch.from_numpy(np.stack([context[-1]] * 3)), equal_nan=True)


def test_extrapolation_of_a_still_field_is_the_field(context):
    still = np.repeat(context[-1:], 3, axis=0)
    out = nowcasts.get_method("extrapolation")(still, LEADS, step_minutes=5,
                                               velocity=np.zeros((2, *still.shape[1:])))
    np.testing.assert_allclose(out, np.stack([still[-1]] * 3), atol=1e-5)


def pysteps_advection(last: np.ndarray, velocity: np.ndarray, steps: list[float]) -> np.ndarray:
    """pysteps' own semi-Lagrangian extrapolation of ``last`` as :func:`advect` runs it."""
    out = pysteps_nowcasts.get_method("extrapolation")(
        np.nan_to_num(last.astype(np.float64)), velocity.astype(np.float64), steps,
        extrap_kwargs={"outval": 0.0})
    return np.where(np.isnan(last), np.nan, out).astype(np.float32)


def test_advection_equals_pysteps_to_the_bit_with_motion_leaving_the_domain(context):
    """Strong, varying motion that carries rain out of the domain and brings none in, at
    uneven leads: the torch scheme gives pysteps' float32 field exactly."""
    rows, cols = np.mgrid[0:context.shape[1], 0:context.shape[2]]
    velocity = np.stack([3.5 + np.sin(rows / 9.0), -2.25 + np.cos(cols / 7.0)])
    steps = [0.5, 1.0, 2.4, 6.0, 12.0]
    np.testing.assert_array_equal(advect(context[-1], velocity, steps),
                                  pysteps_advection(context[-1], velocity, steps))


def test_advection_equals_pysteps_to_the_bit_on_real_radar(ingested_store):
    """KNMI radar with its Lucas-Kanade motion, the leads of a 5-minute model."""
    store = open_store(ingested_store("knmi", "radar/KNMI", "2010-08-26T06:00",
                                      "2010-08-26T06:30"))
    rate = read_context(store, np.datetime64("2010-08-26T06:30", "ns"), 3)
    velocity, steps = motion_field(rate), [float(k) for k in range(1, 13)]
    ours = advect(rate[-1], velocity, steps)
    assert (ours > 1.0).sum() > 1000  # real rain moved
    np.testing.assert_array_equal(ours, pysteps_advection(rate[-1], velocity, steps))


def pysteps_motion(rate: np.ndarray) -> np.ndarray:
    """pysteps' dense Lucas-Kanade field (2, H, W) of the last 3 frames (its defaults)."""
    return motion.get_method("LK")(to_db(rate[-3:])).astype(np.float32)


def test_motion_on_every_pixel_is_pysteps_dense_field_to_the_bit(context):
    assert context.shape[1:] == (70, 62)  # sides no multiple of the grid step
    np.testing.assert_array_equal(motion_field(context, grid_step=1), pysteps_motion(context))


def test_motion_on_the_coarse_grid_follows_pysteps_on_real_radar(ingested_store):
    """The default grid's field against pysteps' on every pixel: equal on the grid points,
    where the weights are the same, and close between them (a few thousandths of the mean
    speed on average and a few hundredths at the 99th percentile: 60 min of leads move
    rain 12 steps)."""
    store = open_store(ingested_store("knmi", "radar/KNMI", "2010-08-26T06:00",
                                      "2010-08-26T06:30"))
    rate = read_context(store, np.datetime64("2010-08-26T06:30", "ns"), 3)
    dense, coarse = pysteps_motion(rate), motion_field(rate)
    speed = np.hypot(*dense).mean()
    assert coarse.shape == dense.shape and speed > 2  # px per step: the rain moves
    step = MOTION_GRID
    np.testing.assert_allclose(coarse[:, ::step, ::step], dense[:, ::step, ::step], atol=1e-5)
    difference = np.abs(coarse - dense)
    assert difference.mean() < 0.005 * speed and np.quantile(difference, 0.99) < 0.05 * speed


def test_motion_without_vectors_is_zero() -> None:
    dry = np.zeros((3, 40, 50))
    np.testing.assert_array_equal(motion_field(dry), np.zeros((2, 40, 50)))
    with pytest.raises(ValueError, match="at least 1 pixel"):
        motion_field(dry, grid_step=0)


def test_advection_of_a_one_pixel_wide_strip_equals_pysteps() -> None:
    strip = np.array([[0.0], [2.0], [5.0], [np.nan], [1.0]])
    velocity = np.stack([np.full(strip.shape, 0.4), np.full(strip.shape, 0.7)])
    np.testing.assert_array_equal(advect(strip, velocity, [1.0, 2.0]),
                                  pysteps_advection(strip, velocity, [1.0, 2.0]))


def test_advection_refuses_a_motion_field_with_gaps(context):
    velocity = np.zeros((2, *context.shape[1:]))
    velocity[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        advect(context[-1], velocity, [1.0])


def test_advection_refuses_leads_out_of_order(context):
    with pytest.raises(ValueError, match="positive and increasing"):
        advect(context[-1], np.zeros((2, *context.shape[1:])), [2.0, 1.0])


def test_steps_refuses_leads_off_its_step(context):
    with pytest.raises(ValueError, match="positive multiples of the 5-minute step"):
        nowcasts.get_method("steps")(context, [7], step_minutes=5, km_per_pixel=1.0)


def test_the_neighbourhood_is_the_exact_empirical_distribution_of_the_square(context):
    """Against the members written out by hand: the extrapolated field in a square of
    half-width floor(1 + lead / 10) px (no rain outside the domain), scored as an ensemble."""
    field = nowcasts.get_method("extrapolation")(context, LEADS, step_minutes=5)
    dist = nowcasts.get_method("neighbourhood")(context, LEADS, step_minutes=5)
    rng = np.random.default_rng(0)
    obs = rng.gamma(0.5, 2.0, size=field.shape)
    crps, p1 = dist.crps(torch.from_numpy(obs)).numpy(), dist.exceedance(1.0).numpy()
    median = dist.quantile(0.5).numpy()
    for j, lead in enumerate(LEADS):
        r = int(1 + lead / 10)
        padded = np.pad(np.nan_to_num(field[j]), r)
        for y, x in [(0, 0), (20, 30), (35, 10), (69, 61)]:
            if np.isnan(field[j, y, x]):
                assert np.isnan(crps[j, y, x])
                continue
            members = padded[y:y + 2 * r + 1, x:x + 2 * r + 1].ravel()
            assert crps[j, y, x] == pytest.approx(ensemble_crps(members, obs[j, y, x]))
            assert p1[j, y, x] == pytest.approx((members > 1).mean())
            assert median[j, y, x] == np.sort(members)[int(np.ceil(len(members) / 2)) - 1]


def one_pass_net() -> MetNet:
    """A small network of any input size, with motion inputs and the prior, its head's
    corrections random (not the untrained zeros)."""
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=4, input_size=128, target_size=32,
                 pack_factor=2, downsampler_channels=(8, 16), lstm_hidden=16, num_blocks=2,
                 conditioned_from=1, heads=2, lead_embedding_dim=8, max_lead_minutes=30,
                 lead_step_minutes=5, lead_channels=4, prior=True, dry_bin=True,
                 position="none", attention_window=8).eval()
    torch.nn.init.normal_(net.head.logits.weight, std=0.1)
    return net


def test_a_network_of_any_size_forecasts_the_domain_in_one_pass(context, monkeypatch):
    """A network without positional embedding is run once over the whole (70 x 62 px)
    domain: a proper distribution at every pixel, the same whether its leads are decoded
    together or one at a time."""
    net = one_pass_net()
    together = nowcasts.get_method("model")(context, LEADS, **options(net))
    assert together.batch_shape == (len(LEADS), *context.shape[1:])
    torch.testing.assert_close(together.probs.sum(1), torch.ones(together.batch_shape))
    monkeypatch.setattr(model_method, "DECODE_PIXELS", 1)
    apart = nowcasts.get_method("model")(context, LEADS, **options(net))
    torch.testing.assert_close(apart.probs, together.probs, atol=1e-5, rtol=1e-4)
    # a checkpoint's temperatures temper each chunk's logits as the whole forecast's
    calibration = Calibration(LEADS, [1.0], [0.5, 1.0, 2.0], [[0.5]] * len(LEADS))
    tempered = nowcasts.get_method("model")(context, LEADS, calibration=calibration,
                                            **options(net))
    expected = torch.softmax(calibration.scale_logits(together.logits, LEADS, dim=1), dim=1)
    torch.testing.assert_close(tempered.probs, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tempered.probs, together.probs, atol=1e-3)
    # the encoder ran in a worker thread beside the motion: the same as one after the other
    tiling = model_method.one_pass_tiling(net, context.shape[1:])
    planes = model_method.pad_planes(
        lead_planes(context[-3:], [m / 5 for m in LEADS], *model_method.motion_layout(net)),
        tiling)
    with torch.inference_mode():
        latent = net.encode(model_method.padded_input(context, tiling)[None])
        logits = net.decode(latent, torch.tensor(LEADS), planes[None])[0]
    height, width = context.shape[1:]
    torch.testing.assert_close(together.probs,
                               torch.softmax(logits[..., :height, :width], dim=1))


def test_errors_of_the_encoder_and_of_the_work_beside_it_reach_the_caller():
    net = one_pass_net()

    def failing_work() -> None:
        raise ValueError("the motion failed")

    with pytest.raises(ValueError, match="the motion failed"):
        model_method.encode_while(net, torch.zeros(1, 4, 2, 128, 128), failing_work)
    with pytest.raises(ValueError, match=r"expected input \(B, 4, 2, 128, 128\)"):
        model_method.encode_while(net, torch.zeros(1, 4, 3, 128, 128), lambda: None)
