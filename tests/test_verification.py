"""Scores of the model and the baselines, checked against pysteps called by hand."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from pysteps import motion, nowcasts
from pysteps.utils import transformation
from pysteps.verification import det_cat_fct, probscores, spatialscores

from metnet import verification
from metnet.cli import main
from metnet.distribution import RainRateDistribution
from metnet.forecast import complete_init_times, forecast_dataset
from metnet.io.store import open_store
from metnet.metrics import CalibrationStatistics, ContingencyScores
from metnet.nowcasts import extrapolation, get_method
from metnet.nowcasts import steps as steps_method
from metnet.nowcasts.extrapolation import motion_field
from metnet.transforms import clean_rate
from metnet.verification import evaluate, scale_pixels, write_evaluation

LEADS = [5, 15, 30]
THRESHOLDS = (0.1, 1.0, 4.0)
SCALES_KM = (1.0, 5.0)
INITS = ["2024-06-01T12:15", "2024-06-01T12:25"]
MEMBERS = 6  # STEPS members in the tests (evaluate's default is 20)


@pytest.fixture(scope="module")
def store_path(tiny_store):
    return tiny_store


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def net(tiny_net):
    return tiny_net


@pytest.fixture(scope="module")
def result(net, store):
    """The evaluation, with motion on every pixel as pysteps computes it (:func:`by_hand`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extrapolation, "MOTION_GRID", 1)
        return evaluate(net, store, INITS, LEADS, THRESHOLDS, SCALES_KM,
                        steps_members=MEMBERS)


def score(table: pd.DataFrame, method: str, metric: str, lead: int, threshold=None,
          scale=None) -> float:
    rows = table[(table.method == method) & (table.metric == metric)
                 & (table.lead_time_min == lead)]
    if threshold is not None:
        rows = rows[rows.threshold == threshold]
    if scale is not None:
        rows = rows[rows.scale_km == scale]
    assert len(rows) == 1
    return float(rows.value.iloc[0])


def by_hand(store, init: str, seed: int | None = None) -> dict[str, np.ndarray]:
    """Observation, verified pixels and both baselines (L, H, W), and with a ``seed`` the
    STEPS ensemble (M, L, H, W), straight from pysteps."""
    t0 = np.datetime64(init)
    rate = clean_rate(store.rain_rate.sel(
        time=[t0 - np.timedelta64(m, "m") for m in (10, 5, 0)]).values.copy())
    obs = clean_rate(store.rain_rate.sel(
        time=[t0 + np.timedelta64(m, "m") for m in LEADS]).values.copy())
    db, _ = transformation.dB_transform(rate.astype(float), threshold=0.1, zerovalue=-15.0)
    db[~np.isfinite(db)] = -15.0
    velocity = motion.get_method("LK")(db)
    extrapolated = nowcasts.get_method("extrapolation")(
        np.nan_to_num(rate[-1]), velocity, [m / 5 for m in LEADS], extrap_kwargs={"outval": 0.0})
    valid = np.isfinite(obs) & np.isfinite(rate[-1])
    out = {"obs": obs, "valid": valid, "persistence": np.repeat(rate[-1:], len(LEADS), 0),
           "extrapolation": extrapolated}
    if seed is not None:
        out["steps"] = steps_by_hand(db, velocity.astype(np.float32), rate[-1], seed)
    return out


def steps_by_hand(db: np.ndarray, velocity: np.ndarray, last: np.ndarray,
                  seed: int) -> np.ndarray:
    """STEPS (M, L, H, W) mm/h as in pysteps' examples, NaN where ``last`` is, 0 where rain
    came from outside the domain (the velocity is float32, as the motion module keeps it)."""
    ensemble = nowcasts.get_method("steps")(
        db, velocity.astype(float), max(LEADS) // 5, n_ens_members=MEMBERS,
        n_cascade_levels=6, precip_thr=-10.0, kmperpixel=1.0, timestep=5,
        noise_method="nonparametric", mask_method="incremental", probmatching_method="cdf",
        seed=seed, num_workers=1, fft_method="numpy")[:, [m // 5 - 1 for m in LEADS]]
    rate = np.nan_to_num(transformation.dB_transform(ensemble, threshold=-10.0,
                                                     inverse=True)[0])
    return np.where(np.isnan(last), np.nan, rate)


def test_baseline_scores_equal_pysteps_on_the_same_fields_pooled_over_init_times(store,
                                                                                  result):
    cases = [by_hand(store, init) for init in INITS]
    scales = scale_pixels(store, SCALES_KM)
    assert scales == {1.0: 1, 5.0: 5}
    for method in ("persistence", "extrapolation"):
        for j, lead in enumerate(LEADS):
            fc = np.concatenate([c[method][j][c["valid"][j]] for c in cases])
            obs = np.concatenate([c["obs"][j][c["valid"][j]] for c in cases])
            for t in THRESHOLDS:
                expected = det_cat_fct(fc, obs, t, ["CSI", "POD", "FAR"])
                for name, value in expected.items():
                    assert score(result.scores, method, name.lower(), lead, t) == pytest.approx(
                        value, nan_ok=True)
            for km, px in scales.items():  # pysteps' FSS of the events R > 1 mm/h
                fss = spatialscores.fss_init(0.5, px)
                for c in cases:
                    spatialscores.fss_accum(fss, np.where(c["valid"][j], c[method][j] > 1, np.nan),
                                            np.where(c["valid"][j], c["obs"][j] > 1, np.nan))
                assert score(result.scores, method, "fss", lead, 1.0, km) == pytest.approx(
                    spatialscores.fss_compute(fss))
            error = np.abs(fc - obs).mean()
            assert score(result.scores, method, "mae", lead) == pytest.approx(error, rel=1e-5)
            assert score(result.scores, method, "crps", lead) == pytest.approx(error, rel=1e-5)
            brier = (((fc > 1) - (obs > 1).astype(float)) ** 2).mean()
            assert score(result.scores, method, "brier", lead) == pytest.approx(brier)


def test_model_scores_follow_from_its_forecast(net, store, result):
    fc = forecast_dataset(net, store, INITS, LEADS, quantiles=(0.5,), thresholds=(1.0,),
                          bin_probabilities=True)
    cases = [by_hand(store, init) for init in INITS]
    for j, lead in enumerate(LEADS):
        valid = np.stack([c["valid"][j] for c in cases])
        obs = np.stack([c["obs"][j] for c in cases])[valid]
        p = fc.probability_of_exceedance.sel(threshold=1.0).values[:, j][valid]
        median = fc.precip_rate_quantile.sel(quantile=0.5).values[:, j][valid]
        hits = ((p >= 0.5) & (obs > 1)).sum()
        assert score(result.scores, "model", "pod", lead, 1.0) == pytest.approx(
            hits / (obs > 1).sum())
        assert score(result.scores, "model", "mae", lead) == pytest.approx(
            np.abs(median - obs).mean(), rel=1e-5)
        assert score(result.scores, "model", "brier", lead) == pytest.approx(
            ((p - (obs > 1)) ** 2).mean(), rel=1e-5)
        probs = torch.from_numpy(fc.bin_probability.values[:, :, j]).movedim(0, -1)[valid]
        dist = RainRateDistribution(probs.log(), fc.bin_edges.values, dim=-1)
        assert score(result.scores, "model", "crps", lead) == pytest.approx(
            float(dist.crps(torch.from_numpy(obs)).mean()), rel=1e-4)
        table = result.reliability
        counts = table[(table.method == "model") & (table.lead_time_min == lead)]["count"]
        assert counts.sum() == valid.sum()


def test_table_is_tidy(result):
    table = result.scores
    assert list(table.columns) == ["method", "metric", "threshold", "scale_km",
                                   "lead_time_min", "value"]
    assert list(dict.fromkeys(table.method)) == ["model", "neighbourhood", "steps", "persistence",
                                                 "extrapolation"]
    per_lead = 3 * len(THRESHOLDS) + len(SCALES_KM) + 3
    assert len(table) == len(LEADS) * (5 * per_lead + 3)  # + brier_reliability of 3 methods
    assert not table.duplicated(["method", "metric", "threshold", "scale_km",
                                 "lead_time_min"]).any()


@pytest.mark.real_data
def test_evaluate_on_real_knmi_radar(ingested_store, checkpoint, tmp_path, capsys):
    knmi = ingested_store("knmi", "radar/KNMI", "2010-08-26T04:00", "2010-08-26T05:35",
                          coarsen=4)
    ds = open_store(knmi)
    assert len(complete_init_times(ds, "2010-08-26T04:10", "2010-08-26T04:15", 3, [30])) == 2
    out = tmp_path / "eval"
    assert main(["evaluate", "--ckpt_path", str(checkpoint), "--store", str(knmi), "--start",
                 "2010-08-26T04:10", "--end", "2010-08-26T04:15", "--out", str(out),
                 "--lead_times", "[10,30]"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["reliability.csv", "reliability.png",
                                                     "scores.csv", "skill.png"]
    table = pd.read_csv(out / "scores.csv")
    assert set(table.method) == {"model", "neighbourhood", "steps", "persistence",
                                 "extrapolation"}
    assert set(table.lead_time_min) == {10, 30}
    for method in ("persistence", "extrapolation"):
        assert 0 < score(table, method, "csi", 10, 1.0) < 1
        assert score(table, method, "mae", 30) > 0
    assert "wrote" in capsys.readouterr().out


def test_evaluate_refuses_a_period_without_complete_windows(store_path, checkpoint, tmp_path,
                                                           capsys):
    assert main(["evaluate", "--ckpt_path", str(checkpoint), "--store", str(store_path),
                 "--start",
                 "2024-06-01T12:50", "--end", "2024-06-01T12:55", "--out",
                 str(tmp_path / "e")]) == 1
    assert "no init time from 2024-06-01T12:50" in capsys.readouterr().err


# -- the STEPS ensemble ------------------------------------------------------------------


def test_ensemble_crps_equals_pysteps_crps_on_random_data():
    rng = np.random.default_rng(0)
    members, obs = rng.gamma(0.6, 2.0, (9, 12, 10)), rng.gamma(0.6, 2.0, (12, 10))
    crps = verification.ensemble_crps(members, obs)
    assert crps.shape == obs.shape
    assert crps.mean() == pytest.approx(probscores.CRPS(members, obs), rel=1e-10)
    for i, j in [(0, 0), (3, 7), (11, 9)]:
        assert crps[i, j] == pytest.approx(
            probscores.CRPS(members[:, i:i + 1, j], obs[i:i + 1, j]), rel=1e-10)


def crps_integral(members: np.ndarray, y: float) -> float:
    """Integral of (F(x) - 1{x >= y})^2 for the step CDF F of ``members``, exactly: the
    integrand is constant between consecutive values."""
    points = np.sort(np.append(members, y))
    middle = 0.5 * (points[1:] + points[:-1])
    cdf = (members[:, None] <= middle).mean(axis=0)
    return float((((cdf - (middle >= y)) ** 2) * np.diff(points)).sum())


def test_ensemble_crps_is_exact_when_members_equal_the_observation():
    # No rain is the usual tie: pysteps' CRPS (strict inequalities) drops tied intervals.
    rng = np.random.default_rng(1)
    members = rng.gamma(0.6, 2.0, (7, 40)) * (rng.random((7, 40)) < 0.5)
    obs = np.where(rng.random(40) < 0.5, 0.0, members[2])  # ties at 0 and with a member
    crps = verification.ensemble_crps(members, obs)
    for k in range(40):
        assert crps[k] == pytest.approx(crps_integral(members[:, k], obs[k]), abs=1e-12)


def test_steps_scores_follow_from_the_pysteps_ensemble(store, result):
    cases = [by_hand(store, init, seed=k) for k, init in enumerate(INITS)]
    table = result.reliability
    for j, lead in enumerate(LEADS):
        members = np.concatenate([c["steps"][:, j][:, c["valid"][j]] for c in cases], axis=1)
        obs = np.concatenate([c["obs"][j][c["valid"][j]] for c in cases])
        p = (members > 1.0).mean(axis=0)
        assert members.shape[0] == MEMBERS
        pairs = np.abs(members[:, None] - members[None]).mean(axis=(0, 1))
        assert score(result.scores, "steps", "crps", lead) == pytest.approx(
            (np.abs(members - obs).mean(axis=0) - pairs / 2).mean(), rel=1e-4)
        assert score(result.scores, "steps", "mae", lead) == pytest.approx(
            np.abs(np.median(members, axis=0) - obs).mean(), rel=1e-4)
        assert score(result.scores, "steps", "brier", lead, 1.0) == pytest.approx(
            ((p - (obs > 1)) ** 2).mean(), rel=1e-5)
        for t in THRESHOLDS:
            hits = (((members > t).mean(axis=0) >= 0.5) & (obs > t)).sum()
            assert score(result.scores, "steps", "pod", lead, t) == pytest.approx(
                hits / (obs > t).sum(), nan_ok=True)
        assert score(result.scores, "steps", "brier_reliability", lead, 1.0) == pytest.approx(
            reliability_by_hand(p, obs > 1.0), rel=1e-6, abs=1e-12)
        rows = table[(table.method == "steps") & (table.lead_time_min == lead)]
        assert rows["count"].sum() == len(obs)


def reliability_by_hand(p: np.ndarray, event: np.ndarray) -> float:
    """sum_k n_k (mean p_k - event frequency_k)^2 / N over pysteps' 10 probability bins."""
    bins = np.digitize(p, np.linspace(-1e-6, 1 + 1e-6, 11), right=True)
    return sum((k == bins).sum() * (p[k == bins].mean() - event[k == bins].mean()) ** 2
               for k in np.unique(bins)) / len(p)


def test_brier_score_is_reliability_minus_resolution_plus_uncertainty():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 10, 5000) / 10 + 0.05  # one probability per bin: exact decomposition
    obs = np.where(rng.random(5000) < p ** 2, 3.0, 0.0)  # over-forecast: unreliable
    diagram = probscores.reldiag_init(0.5, 10, min_count=1)
    probscores.reldiag_accum(diagram, p, (obs > 1.0).astype(float))
    event = obs > 1.0
    base = event.mean()
    resolution = sum((p == q).sum() * (event[p == q].mean() - base) ** 2
                     for q in np.unique(p)) / len(p)
    reliability = verification.brier_reliability(diagram)
    assert reliability > 0.01
    assert reliability - resolution + base * (1 - base) == pytest.approx(
        ((p - event) ** 2).mean(), rel=1e-12)


def test_evaluate_runs_a_20_member_steps_ensemble_by_default(net, store, monkeypatch):
    assert inspect.signature(evaluate).parameters["steps_members"].default == 20
    sizes = []

    def spy(*args, **kwargs):
        members = real(*args, **kwargs)
        sizes.append(members.shape[0])
        return members

    real = steps_method.forecast
    monkeypatch.setattr(steps_method, "forecast", spy)
    table = evaluate(net, store, INITS[:1], [5], (1.0,), (1.0,)).scores
    assert sizes == [20]
    assert "steps" in set(table.method)
    assert set(evaluate(net, store, INITS[:1], [5], (1.0,), (1.0,),
                        steps_members=0).scores.method) == {"model", "neighbourhood",
                                                             "persistence",
                                                             "extrapolation"}
    with pytest.raises(ValueError, match="steps_members must be >= 0"):
        evaluate(net, store, INITS[:1], [5], (1.0,), (1.0,), steps_members=-1)


def test_steps_ensemble_mean_follows_a_translating_field():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    size, shift, margin = 64, 2, 20
    canvas = gaussian_filter(rng.standard_normal((size, size + 2 * margin)), 5, mode="wrap")
    canvas = np.clip(6 * canvas / canvas.std(), 0, None)  # smooth rain cells, mm/h

    def field(n: int) -> np.ndarray:  # rain moving +x by ``shift`` px per step
        return canvas[:, margin - shift * n:margin - shift * n + size].astype(np.float32)

    rate = np.stack([field(-2), field(-1), field(0)])
    velocity = motion_field(rate)
    assert np.median(velocity[0]) == pytest.approx(shift, abs=0.2)
    leads = [1, 2, 4]
    mean = get_method("steps")(rate, [5 * n for n in leads], step_minutes=5,
                                        km_per_pixel=1.0, velocity=velocity,
                                        members=8).mean(axis=0)
    inside = (slice(None), slice(4 * shift + 2, None))  # away from the inflow edge
    for j, n in enumerate(leads):
        truth = field(n)[inside]
        assert np.corrcoef(mean[j][inside].ravel(), truth.ravel())[0, 1] > 0.85
        assert (np.abs(mean[j][inside] - truth).mean()
                < np.abs(rate[-1][inside] - truth).mean())  # better than persistence


def test_evaluation_files_hold_every_probabilistic_method(result, tmp_path):
    written = write_evaluation(result, tmp_path)
    assert sorted(p.name for p in written) == ["reliability.csv", "reliability.png",
                                               "scores.csv", "skill.png"]
    reliability = pd.read_csv(tmp_path / "reliability.csv")
    assert list(reliability.columns) == ["method", "lead_time_min", "bin",
                                         "forecast_probability", "observed_frequency", "count"]
    assert list(dict.fromkeys(reliability.method)) == ["model", "neighbourhood", "steps"]
    scores = pd.read_csv(tmp_path / "scores.csv")
    rel = scores[scores.metric == "brier_reliability"]
    assert sorted(set(rel.method)) == ["model", "neighbourhood", "steps"]
    assert len(rel) == 3 * len(LEADS) and (rel.threshold == 1.0).all()
    assert ((rel.value >= 0) & (rel.value <= 1)).all()


# -- calibrated decisions ----------------------------------------------------------------


class StubCalibration:
    """Per-lead temperatures and a cut per (lead, threshold), as evaluate uses a calibration."""

    def __init__(self, temperature: dict[int, float], cut) -> None:
        self.temperature, self.cut, self.asked = temperature, cut, set()

    def scale_logits(self, logits: torch.Tensor, lead_times, dim: int) -> torch.Tensor:
        t = torch.tensor([self.temperature[int(m)] for m in lead_times], dtype=logits.dtype)
        return logits / t.reshape((1,) * (dim - 1) + (-1,) + (1,) * (logits.ndim - dim))

    def decision_threshold(self, lead_minutes: int, threshold: float) -> float:
        self.asked.add((lead_minutes, threshold))
        return self.cut(lead_minutes, threshold)


def calibrated(net, store, calibration: StubCalibration):
    return evaluate(net, store, INITS, LEADS, THRESHOLDS, SCALES_KM, steps_members=0,
                    calibration=calibration)


def test_identity_calibration_gives_exactly_the_model_scores(net, store):
    res = calibrated(net, store, StubCalibration(dict.fromkeys(LEADS, 1.0), lambda m, t: 0.5))
    assert list(dict.fromkeys(res.scores.method)) == ["model", "model_calibrated",
                                                      "neighbourhood", "persistence",
                                                      "extrapolation"]
    for table in (res.scores, res.reliability):
        model = table[table.method == "model"].drop(columns="method").reset_index(drop=True)
        tempered = table[table.method == "model_calibrated"].drop(columns="method")
        pd.testing.assert_frame_equal(model, tempered.reset_index(drop=True))


def test_calibrated_decisions_use_the_cut_of_each_lead_and_threshold(net, store):
    cuts = {5: lambda t: 0.0, 15: lambda t: 0.0 if t == 0.1 else 1.01, 30: lambda t: 1.01}
    stub = StubCalibration(dict.fromkeys(LEADS, 1.0), lambda m, t: cuts[m](t))
    table = calibrated(net, store, stub).scores
    assert stub.asked == {(m, t) for m in LEADS for t in THRESHOLDS}
    cases = [by_hand(store, init) for init in INITS]
    for t in THRESHOLDS:
        obs = np.concatenate([c["obs"][0][c["valid"][0]] for c in cases])
        assert (obs > t).any()
        assert score(table, "model_calibrated", "pod", 5, t) == 1.0  # all rain: every event hit
        assert score(table, "model_calibrated", "far", 5, t) == pytest.approx((obs <= t).mean())
        assert score(table, "model_calibrated", "pod", 15, t) == (1.0 if t == 0.1 else 0.0)
        assert score(table, "model_calibrated", "pod", 30, t) == 0.0  # never rain
    # temperature 1: the probabilities' logs tempered by nothing (up to float32 rounding)
    assert score(table, "model_calibrated", "brier", 5, 1.0) == pytest.approx(
        score(table, "model", "brier", 5, 1.0), rel=1e-6)


def test_calibrated_scores_follow_from_the_tempered_distribution(net, store):
    temperature = {5: 0.5, 15: 2.0, 30: 3.0}
    table = calibrated(net, store, StubCalibration(temperature, lambda m, t: 0.5)).scores
    fc = forecast_dataset(net, store, INITS, LEADS, quantiles=(0.5,), thresholds=(1.0,),
                          bin_probabilities=True)
    cases = [by_hand(store, init) for init in INITS]
    for j, lead in enumerate(LEADS):
        valid = np.stack([c["valid"][j] for c in cases])
        obs = torch.from_numpy(np.stack([c["obs"][j] for c in cases])[valid])
        probs = torch.from_numpy(fc.bin_probability.values[:, :, j]).movedim(0, -1)[valid]
        dist = RainRateDistribution(probs.log() / temperature[lead], fc.bin_edges.values, dim=-1)
        p = dist.exceedance(1.0)
        expected = {"brier": ((p - (obs > 1).double()) ** 2).mean(),
                    "mae": (dist.quantile(0.5) - obs).abs().mean(),
                    "crps": dist.crps(obs).mean(),
                    "pod": ((p >= 0.5) & (obs > 1)).sum() / (obs > 1).sum()}
        for metric, value in expected.items():
            threshold = None if metric in ("mae", "crps") else 1.0
            assert score(table, "model_calibrated", metric, lead, threshold) == pytest.approx(
                float(value), rel=1e-4)
        assert score(table, "model_calibrated", "brier", lead, 1.0) != pytest.approx(
            score(table, "model", "brier", lead, 1.0), rel=1e-3)


# -- one definition of a rain event ----------------------------------------------------


def test_a_rate_exactly_on_a_threshold_is_no_event_in_test_evaluate_and_calibrate():
    """Radar products are quantised, so rates fall exactly on thresholds. `metnet test`
    (ContingencyScores), `metnet evaluate` (ScoreAccumulator) and the calibration count an
    event where the rate is above the threshold, as pysteps does, and so agree."""
    thresholds = [0.1, 1.0, 4.0, 8.0]
    levels = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    obs, fc = (levels[rng.integers(0, len(levels), size=(2, 12, 12))] for _ in range(2))
    assert all((obs == t).any() and (fc == t).any() for t in thresholds)
    valid = np.ones_like(obs, dtype=bool)

    accumulator = verification.ScoreAccumulator(2, thresholds, {1.0: 1}, 1.0)
    accumulator.add(verification.point_forecast(fc, obs, thresholds, 1.0), obs, valid)
    evaluated = pd.DataFrame(accumulator.rows("persistence", [5, 10]))
    contingency = ContingencyScores(2, thresholds)
    contingency.update(torch.stack([torch.from_numpy(fc) > t for t in thresholds], dim=1)[None],
                       torch.from_numpy(obs)[None])
    tested = contingency.compute()
    for j, lead in enumerate([5, 10]):
        for i, t in enumerate(thresholds):
            expected = det_cat_fct(fc[j], obs[j], t, ["CSI", "POD", "FAR"])
            for name, value in expected.items():
                assert score(evaluated, "persistence", name.lower(), lead, t) == pytest.approx(
                    value, nan_ok=True)
                assert float(tested[name.lower()][j, i]) == pytest.approx(value, nan_ok=True)

    stats = CalibrationStatistics([0.0, 0.1, 1.0, 4.0, 8.0, 100.0], [5, 10], thresholds)
    stats.update(torch.zeros(1, 2, 5, 12, 12), torch.from_numpy(obs)[None], torch.tensor([5, 10]))
    events = stats.hist_events[0].sum(-1)  # (L, N) observed events
    expected = np.array([[(obs[j] > t).sum() for t in thresholds] for j in range(2)])
    np.testing.assert_array_equal(events.numpy(), expected)


def test_every_method_of_an_evaluation_has_a_colour_of_its_own():
    """In skill.png each method's line keeps one colour, none shared with another method."""
    from metnet.plotting import METHOD_COLOURS
    from metnet.verification import METHODS

    colours = [METHOD_COLOURS.get(method) for method in METHODS]
    assert None not in colours
    assert len(set(colours)) == len(METHODS)
