"""Categorical rain-rate distribution over bins of rain rate (mm/h).

The network predicts logits over K bins with edges ``e_0 < e_1 < ... < e_K`` in mm/h.
Within a bin the density is taken as uniform, so the CDF is piecewise linear between the
edges; all quantities below (CDF, exceedance, mean, quantiles, CRPS, samples) follow
exactly from that piecewise-uniform density. The last edge is finite: a rain rate above it
is counted in the last bin (:func:`rain_to_bin`).

A **dry bin** is a first bin of zero width (``e_0 == e_1``, e.g. ``0, 0, 0.1, ...``): a point
mass at exactly ``e_0`` = 0 mm/h, "no rain". Most radar pixels are dry, and a forecast of
"no rain" spread uniformly over [0, 0.1) mm/h scores a CRPS of up to 0.033 mm/h against a
dry observation where a point mass scores 0; with it, a histogram of an ensemble over the
bins scores the ensemble's own CRPS to within the bin widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Edges (mm/h) of the compact CPU bin set: fine below 1 mm/h, roughly log-spaced to 100 mm/h.
#: The verification thresholds 0.1, 0.2, 1, 2, 4 and 8 mm/h are edges, so exceedance
#: probabilities at those thresholds involve no within-bin interpolation.
COMPACT_EDGES: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0,
)  # fmt: skip


def uniform_bins(num_bins: int = 512, width: float = 0.2) -> list[float]:
    """Edges (mm/h) of ``num_bins`` bins of equal ``width`` starting at 0.

    The MetNet paper uses 512 bins of 0.2 mm/h (0 to 102.4 mm/h).
    """
    if num_bins < 1 or width <= 0:
        raise ValueError(f"need num_bins >= 1 and width > 0, got {num_bins}, {width}")
    return [round(i * width, 10) for i in range(num_bins + 1)]


#: Edges (mm/h) that ``compact_bins(drizzle=True)`` adds below 0.1 mm/h. In a light-rain
#: archive most wet pixels lie there (FMI: half of them below 0.05 mm/h), and one bin
#: spreading them evenly over [0, 0.1) mm/h costs CRPS that the forecast cannot win back
#: (BENCHMARKS.md, "Bins for drizzle").
DRIZZLE_EDGES: tuple[float, ...] = (0.01, 0.02, 0.05)


def compact_bins(dry: bool = False, drizzle: bool = False) -> list[float]:
    """Edges (mm/h) of the compact 24-bin set :data:`COMPACT_EDGES` (0 to 100 mm/h); with
    ``drizzle`` the :data:`DRIZZLE_EDGES` too (27 bins), and with ``dry`` a dry bin (a point
    mass at 0 mm/h) in front (25 or 28 bins)."""
    edges = sorted({*COMPACT_EDGES, *DRIZZLE_EDGES}) if drizzle else list(COMPACT_EDGES)
    return [0.0, *edges] if dry else edges


def has_dry_bin(edges: Sequence[float] | Tensor) -> bool:
    """Whether the first bin is a dry bin (zero width: a point mass at the first edge)."""
    return float(edges[0]) == float(edges[1])


def as_edges(edges: Sequence[float] | Tensor, like: Tensor | None = None) -> Tensor:
    """Bin edges (mm/h) as a 1-D tensor (K+1,) on ``like``'s device and floating dtype."""
    device = like.device if like is not None else None
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    return torch.as_tensor(edges, dtype=dtype, device=device)


def check_edges(edges: Sequence[float]) -> None:
    """Raise ``ValueError`` unless ``edges`` are finite and strictly increasing (but for a
    dry bin: the first two may be equal, if a third follows)."""
    values = [float(e) for e in edges]
    if len(values) < 2:
        raise ValueError("bin edges need at least 2 values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("bin edges must be finite (the last edge too)")
    rest = values[1:] if len(values) > 2 and values[0] == values[1] else values
    if any(b <= a for a, b in zip(rest[:-1], rest[1:], strict=True)):
        raise ValueError("bin edges must be strictly increasing (a dry bin aside)")


def rain_to_bin(rate: Tensor, edges: Sequence[float] | Tensor) -> Tensor:
    """Bin index (long, same shape as ``rate``) of rain rates in mm/h.

    Bin k holds ``e_k <= r < e_{k+1}``; rates at or above the last edge go to the last bin
    and rates below the first edge to bin 0. With a dry bin, bin 0 holds rates at or below
    the first edge and bin 1 those above it up to ``e_2``. NaN maps to the last bin: mask it
    yourself.
    """
    e = as_edges(edges, like=rate)
    bins = torch.bucketize(rate.contiguous(), e[1:-1].contiguous(), right=True)
    return torch.where(rate <= e[0], 0, bins) if has_dry_bin(e) else bins


def fraction_below(r: Tensor, edges: Tensor) -> Tensor:
    """Fraction (0..1) of each of the K bins of ``edges`` (K+1,) at or below rates ``r``
    (..., 1) or (..., K) mm/h, under the piecewise-uniform density: (..., K). A zero-width
    (dry) bin counts whole from its edge on."""
    widths = edges[1:] - edges[:-1]
    inside = (r - edges[:-1]) / widths.clamp_min(torch.finfo(edges.dtype).tiny)
    return torch.where(widths > 0, inside, torch.where(r >= edges[:-1], 1.0, 0.0)).clamp(0, 1)


def masked_cross_entropy(
    logits: Tensor, target_mm_h: Tensor, edges: Sequence[float] | Tensor, dim: int = -3
) -> Tensor:
    """Mean cross-entropy over the valid (non-NaN) target pixels.

    Args:
        logits: bin logits with the K classes along ``dim``, e.g. ``(B, L, K, H, W)``.
        target_mm_h: observed rain rate in mm/h, the logits' shape without ``dim``,
            e.g. ``(B, L, H, W)``; NaN marks pixels without observation.
        edges: K+1 bin edges in mm/h.
        dim: class dimension of ``logits``.

    Returns:
        Scalar loss. NaN pixels contribute neither loss nor gradient; with no valid pixel
        the loss is 0 (still attached to the graph).
    """
    valid = ~torch.isnan(target_mm_h)
    return pixel_cross_entropy(logits, target_mm_h, edges, dim).sum() / valid.sum().clamp_min(1)


def masked_crps(
    logits: Tensor, target_mm_h: Tensor, edges: Sequence[float] | Tensor, dim: int = -3
) -> Tensor:
    """Mean exact CRPS (mm/h) of the distributions over the valid (non-NaN) target pixels;
    arguments as for :func:`masked_cross_entropy`. Differentiable in the logits; with no
    valid pixel the loss is 0 (still attached to the graph)."""
    valid = ~torch.isnan(target_mm_h)
    crps = RainRateDistribution(logits, edges, dim).crps(target_mm_h.nan_to_num(0.0))
    return torch.where(valid, crps, 0.0).sum() / valid.sum().clamp_min(1)


def pixel_cross_entropy(
    logits: Tensor, target_mm_h: Tensor, edges: Sequence[float] | Tensor, dim: int = -3
) -> Tensor:
    """Cross-entropy per pixel, the shape of ``target_mm_h``; 0 (and no gradient) where the
    target is NaN. Arguments as for :func:`masked_cross_entropy`."""
    valid = ~torch.isnan(target_mm_h)
    bins = rain_to_bin(torch.where(valid, target_mm_h, 0.0), edges)
    flat_logits = logits.movedim(dim, -1).reshape(-1, logits.shape[dim])
    ce = F.cross_entropy(flat_logits, bins.reshape(-1), reduction="none")
    return torch.where(valid.reshape(-1), ce, torch.zeros_like(ce)).reshape(valid.shape)


class RainRateDistribution:
    """Piecewise-uniform distribution of rain rate (mm/h) from bin logits.

    Args:
        logits: logits with the K bins along ``dim``, e.g. ``(B, L, K, H, W)``.
        edges: K+1 strictly increasing, finite bin edges in mm/h.
        dim: class dimension of ``logits`` (default -3, i.e. ``(..., K, H, W)``).

    Every statistic returns the logits' shape without ``dim`` (the "batch shape"), in mm/h
    for rates and dimensionless for probabilities. Computations run in the logits' dtype,
    promoted to at least float32.
    """

    def __init__(self, logits: Tensor, edges: Sequence[float] | Tensor, dim: int = -3) -> None:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        self.dim = dim
        self._logits: Tensor | None = logits.movedim(dim, -1).to(dtype)  # (*batch, K)
        self._probs = torch.softmax(self._logits, dim=-1)  # (*batch, K)
        self._set_edges(edges)

    @classmethod
    def from_probs(cls, probs: Tensor, edges: Sequence[float] | Tensor,
                   dim: int = -3) -> RainRateDistribution:
        """The distribution of bin probabilities (the K bins along ``dim``, summing to 1),
        kept as they are: a forecast makes them chunk by chunk, with no logits kept."""
        dist = cls.__new__(cls)
        dist.dim = dim
        dist._logits = None
        dist._probs = probs.movedim(dim, -1).to(torch.promote_types(probs.dtype, torch.float32))
        dist._set_edges(edges)
        return dist

    def _set_edges(self, edges: Sequence[float] | Tensor) -> None:
        self.edges = as_edges(edges, like=self._probs)  # (K+1,)
        bins = self._probs.shape[-1]
        if self.edges.numel() != bins + 1:
            raise ValueError(f"{bins} bins need {bins + 1} edges, got {self.edges.numel()}")
        self.widths = self.edges[1:] - self.edges[:-1]  # (K,); 0 for a dry bin

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the statistics: the logits' shape without the class dimension."""
        return self._probs.shape[:-1]

    @property
    def logits(self) -> Tensor:
        """The logits, in their given layout (classes along ``dim``), in the computing dtype;
        of a distribution made :meth:`from_probs`, the logs of its probabilities (floored
        at the smallest normal float), whose softmax they are."""
        logits = self._logits
        if logits is None:
            logits = torch.log(self._probs.clamp_min(torch.finfo(self._probs.dtype).tiny))
        return logits.movedim(-1, self.dim)

    @property
    def probs(self) -> Tensor:
        """Bin probabilities, in the logits' layout (classes along ``dim``)."""
        return self._probs.movedim(-1, self.dim)

    def _fraction_below(self, r: Tensor) -> Tensor:
        """(*batch, K): fraction of each bin at or below ``r`` (0..1); a dry bin's point
        mass is at or below any ``r >= e_0``."""
        r = torch.as_tensor(r, dtype=self.edges.dtype, device=self.edges.device)
        return fraction_below(r.unsqueeze(-1), self.edges)

    def cdf(self, r: Tensor | float) -> Tensor:
        """P(R <= r) for ``r`` in mm/h, broadcastable to the batch shape."""
        return (self._probs * self._fraction_below(r)).sum(-1)

    def exceedance(self, threshold: Tensor | float) -> Tensor:
        """P(R > threshold) for a threshold in mm/h, broadcastable to the batch shape."""
        return 1.0 - self.cdf(threshold)

    def mean(self) -> Tensor:
        """Expected rain rate in mm/h (bin centres weighted by probability)."""
        centres = 0.5 * (self.edges[:-1] + self.edges[1:])
        return (self._probs * centres).sum(-1)

    def quantile(self, q: Tensor | float) -> Tensor:
        """Rain rate (mm/h) r with P(R <= r) = q, the inverse of the piecewise-linear CDF.

        ``q`` in [0, 1], broadcastable to the batch shape.
        """
        q = torch.as_tensor(q, dtype=self._probs.dtype, device=self._probs.device)
        q = q.expand(self.batch_shape).unsqueeze(-1).contiguous()  # (*batch, 1)
        cum = self._probs.cumsum(-1)
        k = torch.searchsorted(cum, q).clamp_max(cum.shape[-1] - 1)  # first bin with C_k >= q
        p_k = self._probs.gather(-1, k)
        below = cum.gather(-1, k) - p_k
        frac = ((q - below) / p_k.clamp_min(torch.finfo(p_k.dtype).tiny)).clamp(0.0, 1.0)
        return (self.edges[k] + frac * self.widths[k]).squeeze(-1)

    def _integrals_below(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """(∫ F dx, ∫ F² dx) from the first edge to ``r`` in mm/h, for r <= last edge.

        Inside bin k, F(x) = a + b t with a = C_{k-1}, b = p_k and t = (x - e_k) / w_k,
        so ∫ F dx = w (a t + b t²/2) and ∫ F² dx = w (a² t + a b t² + b² t³/3).
        """
        t = self._fraction_below(r)
        b = self._probs
        a = b.cumsum(-1) - b
        i1 = self.widths * (a * t + 0.5 * b * t**2)
        i2 = self.widths * (a**2 * t + a * b * t**2 + b**2 * t**3 / 3.0)
        return i1.sum(-1), i2.sum(-1)

    def crps(self, obs: Tensor) -> Tensor:
        """Exact CRPS (mm/h) against observed rain rates ``obs`` (mm/h, batch shape).

        CRPS = ∫ (F(x) - 1{x >= y})² dx. With M = max(e_K, y) (beyond M both terms are 1):
        CRPS = ∫_{e_0}^{M} F² dx - 2 ∫_{y}^{M} F dx + (M - y), and above e_K F = 1, so the
        tail [e_K, M] adds (M - e_K) to both integrals. Observations below the first edge
        are clamped to it (rain rates are non-negative). NaN observations give NaN.
        """
        obs = torch.as_tensor(obs, dtype=self.edges.dtype, device=self.edges.device)
        y = obs.clamp_min(self.edges[0])
        last = self.edges[-1]
        tail = (y - last).clamp_min(0.0)  # M - e_K
        i1_all, i2_all = self._integrals_below(last)
        i1_y, _ = self._integrals_below(y.clamp_max(last))
        i1_y = i1_y + tail  # ∫_{e_0}^{y} F dx including the part above e_K
        upper = last + tail  # M
        return (i2_all + tail) - 2.0 * (i1_all + tail - i1_y) + (upper - y)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent samples in mm/h, shape ``(n, *batch_shape)``."""
        flat = self._probs.reshape(-1, self._probs.shape[-1])
        k = torch.multinomial(flat, n, replacement=True, generator=generator).T  # (n, P)
        u = torch.rand(k.shape, generator=generator, dtype=flat.dtype, device=flat.device)
        r = self.edges[k] + u * self.widths[k]
        return r.reshape(n, *self.batch_shape)
