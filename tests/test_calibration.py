"""Calibration fitted from accumulated statistics, checked on synthetic forecasts whose
calibration is known and against brute-force numpy counts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from metnet.calibration import Calibration, fit_calibration
from metnet.distribution import RainRateDistribution, compact_bins, pixel_cross_entropy
from metnet.metrics import CalibrationStatistics

EDGES = compact_bins()
K = len(EDGES) - 1
LEADS = [10, 30]
THRESHOLDS = (0.1, 1.0, 4.0)


def true_logits(batch: int, size: int, seed: int) -> torch.Tensor:
    """(B, L, K, H, W) logits of bell-shaped distributions with random centre and width."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, len(LEADS), 1, size, size)
    centre = torch.rand(shape, generator=g) * len(EDGES)
    width = 1.0 + 3.0 * torch.rand(shape, generator=g)
    k = torch.arange(K, dtype=torch.float32)[None, None, :, None, None]
    return -((k - centre) ** 2) / (2 * width**2)


def draw(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, L, H, W) rain rates in mm/h drawn from the logits' own distribution."""
    g = torch.Generator().manual_seed(seed)
    return RainRateDistribution(logits, EDGES, dim=2).sample(1, generator=g)[0]


def lead_tensor(batch: int) -> torch.Tensor:
    return torch.tensor(LEADS).expand(batch, len(LEADS))


def fit(logits: torch.Tensor, target: torch.Tensor, **kwargs) -> CalibrationStatistics:
    stats = CalibrationStatistics(EDGES, LEADS, THRESHOLDS, **kwargs)
    stats.update(logits, target, lead_tensor(logits.shape[0]))
    return stats


@pytest.fixture(scope="module")
def synthetic():
    logits = true_logits(4, 48, seed=0)
    return logits, draw(logits, seed=1)


def test_calibrated_forecast_keeps_temperature_one(synthetic):
    logits, target = synthetic
    cal = fit(logits, target, probability_bins=20).compute()
    assert all(t in (0.9, 1.0, 1.15) for t in cal.temperature)
    assert np.max(cal.report["reliability_raw"]) < 0.001


def test_overconfident_forecast_gets_temperature_two(synthetic):
    logits, target = synthetic
    cal = fit(2.0 * logits, target, probability_bins=20).compute()
    assert all(t in (1.75, 2.0, 2.5) for t in cal.temperature)
    report = {k: np.array(v) for k, v in cal.report.items()}
    assert (report["reliability_calibrated"] < report["reliability_raw"]).all()
    assert (report["brier_calibrated"] < report["brier_raw"]).all()
    assert (report["cross_entropy_calibrated"] < report["cross_entropy_raw"]).all()


def test_cross_entropy_matches_pixel_cross_entropy(synthetic):
    logits, target = synthetic[0][:1], synthetic[1][:1]
    stats = fit(logits, target, temperatures=(1.0, 2.0))
    for i, temperature in enumerate((1.0, 2.0)):
        expected = pixel_cross_entropy(logits / temperature, target, EDGES, dim=2).sum((0, 2, 3))
        torch.testing.assert_close(stats.ce_sum[i], expected.double(), rtol=1e-5, atol=0)


def test_crps_matches_the_distribution_and_can_choose_the_temperature(synthetic):
    logits, target = synthetic
    temperatures = (0.6, 1.0, 2.0)
    stats = fit(logits, target, temperatures=temperatures, criterion="crps")
    means = []
    for i, temperature in enumerate(temperatures):
        crps = RainRateDistribution(logits / temperature, EDGES, dim=2).crps(target)
        expected = crps.sum((0, 2, 3)).double()
        torch.testing.assert_close(stats.crps_sum[i], expected, rtol=1e-5, atol=0)
        means.append(expected / stats.count)
    cal = stats.compute()
    best = torch.stack(means).argmin(0)  # (L,) by the CRPS of each lead
    assert cal.temperature == [temperatures[int(i)] for i in best]
    assert np.all(np.array(cal.report["crps_calibrated"]) <= np.array(cal.report["crps_raw"]))
    with pytest.raises(ValueError, match="criterion must be one of"):
        CalibrationStatistics(EDGES, LEADS, THRESHOLDS, criterion="brier")


def two_bin_logits(prob: np.ndarray) -> torch.Tensor:
    """(1, 1, 2, 1, P) logits over bins [0, 1) and [1, 2) mm/h with P(R > 1) = ``prob``."""
    p = torch.tensor(prob, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).float()[None, None, :, None]


def test_cut_maximising_csi_is_found():
    # Events at P = 0.305 and 0.6, none at 0.2: every cut in (0.2, 0.305] gives CSI = 1,
    # and 0.30 is the one closest to 0.5; the default 0.5 misses the 0.305 events.
    prob = np.repeat([0.2, 0.305, 0.6], [50, 30, 20])
    rate = np.where(prob > 0.25, 1.5, 0.5)
    stats = CalibrationStatistics([0.0, 1.0, 2.0], [5], thresholds=(1.0,), temperatures=(1.0,))
    stats.update(two_bin_logits(prob), torch.tensor(rate, dtype=torch.float32)[None, None, None],
                 torch.tensor([[5]]))
    cal = stats.compute()
    assert cal.decision_threshold(5, 1.0) == pytest.approx(0.3)
    assert cal.report["csi_calibrated"][0][0] == pytest.approx(1.0)
    assert cal.report["csi_raw"][0][0] == pytest.approx(20 / 50)


def test_no_event_keeps_cut_at_one_half():
    prob = np.linspace(0.05, 0.95, 40)
    stats = CalibrationStatistics([0.0, 1.0, 2.0], [5], thresholds=(1.0,), temperatures=(1.0,))
    stats.update(two_bin_logits(prob), torch.full((1, 1, 1, 40), 0.5), torch.tensor([5]))
    assert stats.compute().probability_threshold == [[0.5]]


def brute_force_scores(prob: np.ndarray, event: np.ndarray, cut: float, bins: int) -> dict:
    """CSI at ``cut``, best CSI over cuts k/bins (k >= 1: the cut 0, rain everywhere, is
    excluded), reliability and Brier score of 1-D data."""
    def csi(c: float) -> float:
        fc = prob >= c
        hits, misses, false_alarms = (fc & event).sum(), (~fc & event).sum(), (fc & ~event).sum()
        return hits / (hits + misses + false_alarms)

    k = np.clip(np.floor(prob * bins).astype(int), 0, bins - 1)
    reliability = sum((prob[k == b].sum() - event[k == b].sum()) ** 2 / (k == b).sum()
                      for b in np.unique(k)) / prob.size
    return {"csi": csi(cut), "best": max(csi(c / bins) for c in range(1, bins)),
            "reliability": reliability, "brier": np.mean((prob - event) ** 2)}


def test_scores_match_brute_force():
    logits = 1.5 * true_logits(2, 12, seed=3)
    target = draw(true_logits(2, 12, seed=3), seed=4)
    bins = 20
    cal = fit(logits, target, temperatures=(0.8, 1.0, 1.5), probability_bins=bins).compute()
    for calibrated in (False, True):
        suffix = "calibrated" if calibrated else "raw"
        for i in range(len(LEADS)):
            temperature = cal.temperature[i] if calibrated else 1.0
            dist = RainRateDistribution(logits[:, i] / temperature, EDGES, dim=1)
            for j, threshold in enumerate(THRESHOLDS):
                prob = dist.exceedance(threshold).flatten().double().numpy()
                event = (target[:, i] >= threshold).flatten().numpy()
                cut = cal.probability_threshold[i][j] if calibrated else 0.5
                expected = brute_force_scores(prob, event, cut, bins)
                for key in ("csi", "reliability", "brier"):
                    got = cal.report[f"{key}_{suffix}"][i][j]
                    assert got == pytest.approx(expected[key], rel=1e-5), (key, suffix, i, j)
                if calibrated:
                    assert expected["csi"] == pytest.approx(expected["best"])


def test_nan_targets_are_ignored(synthetic):
    logits, target = synthetic
    logits, target = logits[:2, :, :, :20, :20], target[:2, :, :20, :20]
    missing = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(5)) < 0.3
    with_nan = fit(logits, torch.where(missing, torch.nan, target))
    keep = ~missing.expand_as(target).transpose(0, 1)  # (L, B, H, W)
    # The observed pixels alone, laid out as (1, L, K, 1, V).
    kept_logits = logits.movedim(2, -1).transpose(0, 1)[keep].reshape(len(LEADS), -1, K)
    kept_target = target.transpose(0, 1)[keep].reshape(1, len(LEADS), 1, -1)
    kept = fit(kept_logits.transpose(1, 2)[None, :, :, None], kept_target)
    for name, value in kept.metric_state.items():
        torch.testing.assert_close(with_nan.metric_state[name], value, rtol=1e-9, atol=1e-9)
    assert with_nan.compute().temperature == kept.compute().temperature


def test_merged_states_equal_one_pass(synthetic):
    logits, target = synthetic
    whole = fit(logits, target)
    first, second = fit(logits[:2], target[:2]), fit(logits[2:], target[2:])
    first.merge_state(second)
    for name, value in whole.metric_state.items():
        torch.testing.assert_close(first.metric_state[name], value, rtol=1e-9, atol=1e-9)
    merged, expected = first.compute(), whole.compute()
    assert merged.temperature == expected.temperature
    assert merged.probability_threshold == expected.probability_threshold
    for key, value in expected.report.items():
        np.testing.assert_allclose(merged.report[key], value, rtol=1e-9)


def test_unknown_lead_in_batch_is_refused(synthetic):
    logits, target = synthetic
    stats = CalibrationStatistics(EDGES, LEADS, THRESHOLDS)
    with pytest.raises(ValueError, match="45"):
        stats.update(logits, target, torch.tensor([[10, 45]]).expand(logits.shape[0], 2))


@pytest.mark.parametrize("kwargs", [{"temperatures": (0.5, 2.0)}, {"probability_bins": 99}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        CalibrationStatistics(EDGES, LEADS, THRESHOLDS, **kwargs)


def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return isinstance(value, (int, float, str))


def test_round_trip_through_weights_only_checkpoint(synthetic, tmp_path):
    logits, target = synthetic
    cal = fit(logits, target).compute()
    assert plain(cal.to_dict())
    torch.save({"calibration": cal.to_dict()}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)["calibration"]
    assert Calibration.from_dict(loaded) == cal
    table = cal.table()
    assert len(table) == len(LEADS) * len(THRESHOLDS)
    assert {"lead_time_min", "threshold", "temperature", "csi_calibrated"} <= set(table.columns)


def test_from_dict_refuses_bad_input():
    d = Calibration.identity(LEADS, THRESHOLDS).to_dict()
    with pytest.raises(ValueError, match="temperature"):
        Calibration.from_dict({**d, "temperature": [1.0]})
    with pytest.raises(ValueError, match="probability_threshold"):
        Calibration.from_dict({**d, "probability_threshold": [[0.5, 0.5]] * 2})
    with pytest.raises(ValueError, match="keys"):
        Calibration.from_dict({k: v for k, v in d.items() if k != "report"})


def test_scale_logits_uses_each_leads_temperature():
    cal = Calibration([10, 20], [1.0], [2.0, 4.0], [[0.4], [0.6]])
    logits = torch.ones(2, 2, 3, 1, 1, dtype=torch.float64)
    scaled = cal.scale_logits(logits, torch.tensor([[20, 10], [10, 20]]))
    assert scaled.dtype == torch.float64
    assert scaled[:, :, 0, 0, 0].tolist() == [[0.25, 0.5], [0.5, 0.25]]
    assert cal.scale_logits(logits, [10, 20])[0, :, 0, 0, 0].tolist() == [0.5, 0.25]
    assert cal.decision_threshold(20, 1.0) == 0.6
    with pytest.raises(ValueError, match="30"):
        cal.scale_logits(logits, [10, 30])
    with pytest.raises(ValueError):
        cal.decision_threshold(10, 2.0)


def test_identity_changes_nothing():
    cal = Calibration.identity([5, 15], [0.1, 1.0])
    logits = torch.randn(1, 2, 4, 3, 3)
    assert torch.equal(cal.scale_logits(logits, [5, 15]), logits)
    assert cal.probability_threshold == [[0.5, 0.5], [0.5, 0.5]]
    assert not math.isnan(cal.decision_threshold(15, 0.1))


class _Echo(torch.nn.Module):
    """A stand-in network whose logits are its ``context`` (B, L, K, H, W)."""

    bin_edges = EDGES

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # gives fit_calibration a device

    def forward(self, context, lead_times, lead_inputs=None):
        return context


def same_fit(a: Calibration, b: Calibration) -> None:
    """The same temperatures and cuts, and the same report up to float summation order."""
    assert (a.temperature, a.probability_threshold) == (b.temperature, b.probability_threshold)
    assert a.report.keys() == b.report.keys()
    for key, value in a.report.items():
        np.testing.assert_allclose(value, b.report[key], rtol=1e-9, err_msg=key)


def test_a_calibration_fitted_on_several_stores_holds_one_per_store(synthetic):
    """Store ``b``'s forecasts are overconfident (logits x 3), ``a``'s are right; batches mix
    the two. The pooled calibration is fitted on all samples, each store's on its own
    samples with the pooled one as the fallback."""
    logits, target = synthetic
    forecast = torch.cat([logits, 3.0 * logits])
    observed = torch.cat([target, target])
    stores = ["a", "b", "b", "a", "b", "a", "a", "b"]
    order = torch.tensor([0, 4, 5, 1, 6, 2, 3, 7])  # samples 0-3 of a, 4-7 of b
    batches = [{"context": forecast[order[i:i + 2]], "target": observed[order[i:i + 2]],
                "lead_times": lead_tensor(2), "store": stores[i:i + 2]} for i in (0, 2, 4, 6)]
    cal = fit_calibration(_Echo(), batches, LEADS, THRESHOLDS, stores=["a", "b", "c"])
    assert list(cal.stores) == ["a", "b"]  # c had no validation batch: no calibration of its own
    pooled = fit(forecast, observed).compute()
    same_fit(cal, pooled)
    same_fit(cal.stores["a"], fit(logits, target).compute(fallback=pooled))
    same_fit(cal.stores["b"], fit(3.0 * logits, target).compute(fallback=pooled))
    assert cal.temperature == [2.0, 2.0]
    assert cal.stores["a"].temperature == [1.0, 1.0]  # clearly better than 2 on a's samples
    assert cal.stores["b"].temperature == [2.0, 2.0]  # its own 2.5: not clearly better
    assert fit(3.0 * logits, target).compute().temperature == [2.5, 2.5]
    assert fit_calibration(_Echo(), batches, LEADS, THRESHOLDS, stores=["a"]).stores == {}


def test_a_stores_fit_keeps_the_pooled_one_unless_clearly_better(synthetic):
    """A store's own temperature and cuts replace the pooled ones only where they beat them
    on the store's data by 2 % of the criterion and 0.02 of CSI."""
    logits, target = synthetic
    own = fit(logits, target).compute()
    near = Calibration(LEADS, list(THRESHOLDS), [1.15] * 2, [[0.45] * 3] * 2)
    kept = fit(logits, target).compute(fallback=near)
    assert kept.temperature == pytest.approx(near.temperature)
    assert kept.probability_threshold == near.probability_threshold
    far = Calibration(LEADS, list(THRESHOLDS), [2.5] * 2, [[0.9] * 3] * 2)
    same_fit(fit(logits, target).compute(fallback=far), own)
    with pytest.raises(ValueError, match="other lead times"):
        fit(logits, target).compute(fallback=Calibration.identity([5], THRESHOLDS))


def test_store_calibrations_round_trip_and_the_pooled_one_is_the_fallback(tmp_path):
    own = Calibration(LEADS, [1.0], [2.0, 0.5], [[0.3], [0.6]])
    cal = replace(Calibration.identity(LEADS, [1.0]), stores={"fmi": own})
    assert cal.for_store("fmi") is cal.stores["fmi"]
    assert cal.for_store("knmi") is cal and cal.for_store(None) is cal
    assert plain(cal.to_dict())
    torch.save({"calibration": cal.to_dict()}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)["calibration"]
    assert Calibration.from_dict(loaded) == cal
    before = {k: v for k, v in cal.to_dict().items() if k != "stores"}  # an older checkpoint's
    assert Calibration.from_dict(before) == Calibration.identity(LEADS, [1.0])
    table = cal.table()
    assert table.store.tolist() == ["", "", "fmi", "fmi"]
    assert table[table.store == "fmi"].temperature.tolist() == [2.0, 0.5]
    other_leads = Calibration.identity([5, 10], [1.0]).to_dict()
    with pytest.raises(ValueError, match="store 'fmi' has other lead times"):
        Calibration.from_dict({**cal.to_dict(), "stores": {"fmi": other_leads}})
    with pytest.raises(ValueError, match="stores must be a dict"):
        Calibration.from_dict({**cal.to_dict(), "stores": ["fmi"]})


def test_a_fallback_off_the_grid_is_refused(synthetic):
    logits, target = synthetic
    with pytest.raises(ValueError, match="not on the grid"):
        fit(logits, target).compute(fallback=Calibration(LEADS, list(THRESHOLDS), [1.2] * 2,
                                                         [[0.5] * 3] * 2))
    with pytest.raises(ValueError, match="candidate cuts"):
        fit(logits, target).compute(fallback=Calibration(LEADS, list(THRESHOLDS), [1.0] * 2,
                                                         [[1.0] * 3] * 2))
