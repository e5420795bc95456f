"""The categorical rain-rate distribution, bin helpers and the masked loss."""

from __future__ import annotations

import pytest
import torch

from metnet.distribution import (
    RainRateDistribution,
    check_edges,
    compact_bins,
    masked_cross_entropy,
    rain_to_bin,
    uniform_bins,
)

EDGES = compact_bins()


@pytest.fixture
def dist() -> RainRateDistribution:
    gen = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(2, 3, len(EDGES) - 1, 4, 5, generator=gen, dtype=torch.float64)
    return RainRateDistribution(logits, EDGES, dim=2)


def _numeric_cdf(d: RainRateDistribution, upper: float, extra: float = 0.0):
    """Grid (n,) from 0 to ``upper`` with 100 points per bin (plus ``extra``), CDF (*batch, n)."""
    knots = [*EDGES, upper]
    pieces = [
        torch.linspace(a, b, 100, dtype=torch.float64)
        for a, b in zip(knots[:-1], knots[1:], strict=True)
    ]
    xs = torch.cat([*pieces, torch.tensor([extra], dtype=torch.float64)]).sort().values
    cdf = d.cdf(xs.reshape(-1, *[1] * len(d.batch_shape)))  # (n, *batch)
    return xs, cdf.movedim(0, -1)


def test_bin_helpers() -> None:
    edges = uniform_bins(512, 0.2)
    assert len(edges) == 513 and edges[0] == 0.0 and edges[-1] == pytest.approx(102.4)
    assert 16 <= len(EDGES) - 1 <= 32 and EDGES[-1] == 100.0
    assert {0.1, 0.2, 1.0, 2.0, 4.0, 8.0} <= set(EDGES)
    check_edges(EDGES)
    for bad in ([0.0], [0.0, 1.0, 1.0], [0.0, float("inf")]):
        with pytest.raises(ValueError):
            check_edges(bad)


def test_rain_to_bin() -> None:
    rate = torch.tensor([0.0, 0.05, 0.1, 0.99, 1.0, 99.9, 100.0, 250.0])
    bins = rain_to_bin(rate, EDGES)
    assert bins.tolist() == [0, 0, 1, 5, 6, 23, 23, 23]


def test_probs_layout_and_normalisation(dist: RainRateDistribution) -> None:
    assert dist.probs.shape == (2, 3, 24, 4, 5)
    assert dist.batch_shape == (2, 3, 4, 5)
    torch.testing.assert_close(dist.probs.sum(2), torch.ones(2, 3, 4, 5, dtype=torch.float64))


def test_cdf_piecewise_linear(dist: RainRateDistribution) -> None:
    assert torch.all(dist.cdf(0.0) == 0) and torch.allclose(dist.cdf(100.0), torch.ones(1).double())
    assert torch.allclose(dist.cdf(1e6), torch.ones(1).double())
    # at an edge the CDF is the cumulative bin probability; halfway it interpolates
    cum = dist.probs.cumsum(2)
    torch.testing.assert_close(dist.cdf(1.0), cum[:, :, 5])
    torch.testing.assert_close(dist.cdf(1.25), cum[:, :, 5] + 0.5 * dist.probs[:, :, 6])


def test_exceedance_and_quantile_consistent_with_cdf(dist: RainRateDistribution) -> None:
    for t in (0.1, 0.35, 1.0, 4.0, 8.0, 33.0):
        torch.testing.assert_close(dist.exceedance(t), 1 - dist.cdf(t))
    for q in (0.01, 0.1, 0.5, 0.9, 0.999):
        r = dist.quantile(q)
        torch.testing.assert_close(dist.cdf(r), torch.full_like(r, q))
    # per-pixel q tensor, and monotonicity
    q = torch.rand(dist.batch_shape, dtype=torch.float64)
    torch.testing.assert_close(dist.cdf(dist.quantile(q)), q)
    assert torch.all(dist.quantile(0.2) <= dist.quantile(0.8))


def test_mean_matches_numerical_integral(dist: RainRateDistribution) -> None:
    # E[R] = ∫_0^∞ (1 - F(x)) dx for non-negative R; F = 1 above the last edge
    xs, cdf = _numeric_cdf(dist, EDGES[-1])
    numeric = torch.trapezoid(1 - cdf, xs, dim=-1)
    torch.testing.assert_close(dist.mean(), numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("obs_value", [0.0, 0.15, 3.3, 42.0, 130.0])
def test_crps_matches_numerical_integral(dist: RainRateDistribution, obs_value: float) -> None:
    obs = torch.full(dist.batch_shape, obs_value, dtype=torch.float64)
    upper = max(EDGES[-1], obs_value) + 1.0
    xs, cdf = _numeric_cdf(dist, upper, extra=obs_value)
    below, above = xs <= obs_value, xs >= obs_value  # the grid holds obs_value itself
    numeric = torch.trapezoid(cdf[..., below] ** 2, xs[below], dim=-1)
    numeric = numeric + torch.trapezoid((1 - cdf[..., above]) ** 2, xs[above], dim=-1)
    torch.testing.assert_close(dist.crps(obs), numeric, rtol=1e-4, atol=1e-5)


def test_crps_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, len(EDGES) - 1, generator=gen, dtype=torch.float64)
    d = RainRateDistribution(logits, EDGES, dim=-1)
    obs = torch.tensor([0.0, 0.4, 2.0, 7.5, 35.0, 120.0], dtype=torch.float64)
    # CRPS = E|X - y| - E|X - X'| / 2 estimated from samples
    n = 200_000
    x1, x2 = d.sample(n, generator=gen), d.sample(n, generator=gen)
    mc = (x1 - obs).abs().mean(0) - 0.5 * (x1 - x2).abs().mean(0)
    stderr = ((x1 - obs).abs().std(0) + (x1 - x2).abs().std(0)) / n**0.5
    assert torch.all((d.crps(obs) - mc).abs() < 5 * stderr + 1e-6)


def test_sample_shape_and_support(dist: RainRateDistribution) -> None:
    s = dist.sample(7, generator=torch.Generator().manual_seed(0))
    assert s.shape == (7, 2, 3, 4, 5)
    assert torch.all(s >= 0) and torch.all(s <= EDGES[-1])


def test_sample_histogram_matches_probs() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]])
    d = RainRateDistribution(logits, [0.0, 1.0, 2.0, 4.0, 8.0], dim=-1)
    s = d.sample(100_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(rain_to_bin(s[:, 0], d.edges), minlength=4).float() / s.shape[0]
    torch.testing.assert_close(freq, d.probs[0], atol=0.01, rtol=0)


def test_sharp_distribution_limits() -> None:
    # all mass in bin 8, [2, 3) mm/h: a uniform distribution
    logits = torch.full((1, 24), -1e4, dtype=torch.float64)
    logits[0, 8] = 0.0
    d = RainRateDistribution(logits, EDGES, dim=-1)
    assert d.mean().item() == pytest.approx(2.5)
    assert d.quantile(0.5).item() == pytest.approx(2.5)
    # CRPS of U(a, b) at its centre: (b - a) / 12
    assert d.crps(torch.tensor([2.5])).item() == pytest.approx(1 / 12)


def test_masked_cross_entropy_ignores_nan_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 24, 6, 6, generator=gen, requires_grad=True)
    target = 10 * torch.rand(2, 3, 6, 6, generator=gen)
    mask = torch.rand(2, 3, 6, 6, generator=gen) < 0.3
    target = torch.where(mask, float("nan"), target)
    loss = masked_cross_entropy(logits, target, EDGES)
    loss.backward()
    # gradient is zero exactly for the masked pixels
    grad_norm = logits.grad.abs().sum(2)
    assert torch.all(grad_norm[mask] == 0) and torch.all(grad_norm[~mask] > 0)
    # mean over valid pixels equals cross-entropy on them alone
    valid_logits = logits.detach().movedim(2, -1)[~mask]
    expected = torch.nn.functional.cross_entropy(valid_logits, rain_to_bin(target[~mask], EDGES))
    torch.testing.assert_close(loss.detach(), expected)


def test_masked_cross_entropy_no_valid_pixel() -> None:
    logits = torch.randn(1, 1, 24, 3, 3, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 1, 3, 3), float("nan")), EDGES)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_a_distribution_of_probabilities_is_that_of_their_logits(
        dist: RainRateDistribution) -> None:
    """A forecast keeps only probabilities: the distribution made from them gives every
    statistic of the one made from logits, and logits whose softmax they are."""
    same = RainRateDistribution.from_probs(dist.probs, EDGES, dim=2)
    assert same.batch_shape == dist.batch_shape
    torch.testing.assert_close(torch.softmax(same.logits, dim=2), dist.probs)
    obs = torch.full(dist.batch_shape, 1.7)
    for stat in (lambda d: d.mean(), lambda d: d.quantile(0.3), lambda d: d.exceedance(1.0),
                 lambda d: d.crps(obs)):
        torch.testing.assert_close(stat(same), stat(dist))
    with pytest.raises(ValueError, match="bins need"):
        RainRateDistribution.from_probs(dist.probs, EDGES[:-1], dim=2)


def test_the_shipped_bins_resolve_drizzle_and_keep_the_verification_thresholds_as_edges():
    from pathlib import Path

    import yaml

    from metnet.distribution import has_dry_bin

    edges = compact_bins(dry=True, drizzle=True)
    check_edges(edges)
    assert has_dry_bin(edges) and len(edges) - 1 == 28
    assert edges[:6] == [0.0, 0.0, 0.01, 0.02, 0.05, 0.1]
    assert {0.1, 0.2, 1.0, 2.0, 4.0, 8.0} <= set(edges)
    assert compact_bins(drizzle=True)[1:4] == [0.01, 0.02, 0.05]
    small = Path(__file__).resolve().parents[1] / "configs/model/small.yaml"
    assert yaml.safe_load(small.read_text())["init_args"]["bin_edges"] == edges
