"""Scores of the model and the baselines, checked against pysteps called by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pysteps import motion, nowcasts
from pysteps.utils import transformation
from pysteps.verification import det_cat_fct, spatialscores
from test_forecast import make_checkpoint, make_store

from metnet.cli import main
from metnet.data.transforms import clean_rate
from metnet.distribution import RainRateDistribution
from metnet.forecast import complete_init_times, forecast_dataset
from metnet.io.store import open_store
from metnet.training import load_checkpoint
from metnet.verification import evaluate, scale_pixels

LEADS = [5, 15, 30]
THRESHOLDS = (0.1, 1.0, 4.0)
SCALES_KM = (1.0, 5.0)
INITS = ["2024-06-01T12:15", "2024-06-01T12:25"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ver") / "s.zarr")


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def net(checkpoint):
    return load_checkpoint(checkpoint)[0]


@pytest.fixture(scope="module")
def result(net, store):
    return evaluate(net, store, INITS, LEADS, THRESHOLDS, SCALES_KM)


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


def by_hand(store, init: str) -> dict[str, np.ndarray]:
    """Observation, verified pixels and both baselines (L, H, W), straight from pysteps."""
    t0 = np.datetime64(init)
    rate = clean_rate(store.precip_rate.sel(
        time=[t0 - np.timedelta64(m, "m") for m in (10, 5, 0)]).values.copy())
    obs = clean_rate(store.precip_rate.sel(
        time=[t0 + np.timedelta64(m, "m") for m in LEADS]).values.copy())
    db, _ = transformation.dB_transform(rate.astype(float), threshold=0.1, zerovalue=-15.0)
    db[~np.isfinite(db)] = -15.0
    velocity = motion.get_method("LK")(db)
    extrapolated = nowcasts.get_method("extrapolation")(
        np.nan_to_num(rate[-1]), velocity, [m / 5 for m in LEADS], extrap_kwargs={"outval": 0.0})
    valid = np.isfinite(obs) & np.isfinite(rate[-1])
    return {"obs": obs, "valid": valid, "persistence": np.repeat(rate[-1:], len(LEADS), 0),
            "extrapolation": extrapolated}


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
            for km, px in scales.items():
                fss = spatialscores.fss_init(1.0, px)
                for c in cases:
                    spatialscores.fss_accum(fss, np.where(c["valid"][j], c[method][j], np.nan),
                                            np.where(c["valid"][j], c["obs"][j], np.nan))
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
        counts = result.reliability[result.reliability.lead_time_min == lead]["count"]
        assert counts.sum() == valid.sum()


def test_table_is_tidy(result):
    table = result.scores
    assert list(table.columns) == ["method", "metric", "threshold", "scale_km",
                                   "lead_time_min", "value"]
    per_lead = 3 * len(THRESHOLDS) + len(SCALES_KM) + 3
    assert len(table) == 3 * len(LEADS) * per_lead
    assert not table.duplicated(["method", "metric", "threshold", "scale_km",
                                 "lead_time_min"]).any()


@pytest.mark.real_data
def test_evaluate_on_real_knmi_radar(ingested_store, checkpoint, tmp_path, capsys):
    knmi = ingested_store("knmi", "radar/KNMI", "2010-08-26T04:00", "2010-08-26T05:35",
                          coarsen=4)
    ds = open_store(knmi)
    assert len(complete_init_times(ds, "2010-08-26T04:10", "2010-08-26T04:15", 3, [30])) == 2
    out = tmp_path / "eval"
    assert main(["evaluate", "--ckpt", str(checkpoint), "--data", str(knmi), "--start",
                 "2010-08-26T04:10", "--end", "2010-08-26T04:15", "--out", str(out),
                 "--lead-times", "10", "30"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["reliability.csv", "reliability.png",
                                                     "scores.csv", "skill.png"]
    table = pd.read_csv(out / "scores.csv")
    assert set(table.method) == {"model", "persistence", "extrapolation"}
    assert set(table.lead_time_min) == {10, 30}
    for method in ("persistence", "extrapolation"):
        assert 0 < score(table, method, "csi", 10, 1.0) < 1
        assert score(table, method, "mae", 30) > 0
    assert "wrote" in capsys.readouterr().out


def test_evaluate_refuses_a_period_without_complete_windows(store_path, checkpoint, tmp_path,
                                                           capsys):
    assert main(["evaluate", "--ckpt", str(checkpoint), "--data", str(store_path), "--start",
                 "2024-06-01T12:50", "--end", "2024-06-01T12:55", "--out",
                 str(tmp_path / "e")]) == 1
    assert "no init time from 2024-06-01T12:50" in capsys.readouterr().err
