"""Probabilistic extrapolation without training: the neighbourhood of the extrapolated field.

Each pixel's ensemble at a lead time is the extrapolated rates
(:mod:`metnet.nowcasts.extrapolation`) in a square around it of half-width
``floor(1 + lead / 10 min)`` pixels (by default), so the forecast widens with lead time and
with how variable the field is nearby: the idea of pysteps' ``lagrangian_probability``,
here as a whole distribution. It is scored with the exact CRPS of that empirical
distribution, so it is the bar that an untrained
:class:`~metnet.models.prior.ExtrapolationPrior` is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from metnet.models.prior import RADIUS, neighbourhood_radius, square_neighbourhoods
from metnet.nowcasts import extrapolation


class NeighbourhoodDistribution:
    """The empirical distribution of each pixel's neighbourhood, per lead.

    Args:
        field: (L, H, W) extrapolated rain rate in mm/h, NaN where unknown (no rain in the
            neighbourhoods; NaN again in every statistic).
        radii: L neighbourhood half-widths in pixels.

    Every statistic has the batch shape (L, H, W), as
    :class:`~metnet.distribution.RainRateDistribution` does.
    """

    def __init__(self, field: np.ndarray, radii: Sequence[int]) -> None:
        self.field = torch.from_numpy(np.asarray(field, dtype=np.float64))
        self.radii = [int(r) for r in radii]
        self.unknown = torch.isnan(self.field)

    @property
    def batch_shape(self) -> torch.Size:
        return self.field.shape

    def _sorted(self, j: int) -> Tensor:
        """(M, H, W) sorted members of lead ``j``."""
        r, (_, height, width) = self.radii[j], self.field.shape
        members = square_neighbourhoods(self.field[j:j + 1].nan_to_num(0.0), r, padding=r)[0]
        return members.sort(dim=0).values.reshape(-1, height, width)

    def _per_lead(self, statistic) -> Tensor:
        out = torch.stack([statistic(self._sorted(j), j) for j in range(len(self.radii))])
        return out.masked_fill(self.unknown, torch.nan)

    def exceedance(self, threshold: float) -> Tensor:
        """P(R > threshold): the fraction of the neighbourhood above it."""
        return self._per_lead(lambda members, _: (members > threshold).double().mean(0))

    def quantile(self, q: float) -> Tensor:
        """The lower empirical q-quantile of the neighbourhood (the member of rank ceil(q M))."""
        def rank(members: Tensor, _: int) -> Tensor:
            return members[max(int(np.ceil(q * len(members))) - 1, 0)]
        return self._per_lead(rank)

    def mean(self) -> Tensor:
        """The neighbourhood mean (mm/h)."""
        return self._per_lead(lambda members, _: members.mean(0))

    def crps(self, obs: Tensor) -> Tensor:
        """Exact CRPS (mm/h) of the neighbourhood ensemble against ``obs`` (L, H, W) mm/h:
        mean_i |X_i - y| - sum_i (2i - M - 1) X_(i) / M^2."""
        y = torch.as_tensor(obs, dtype=torch.float64)

        def score(members: Tensor, j: int) -> Tensor:
            m = len(members)
            weights = (2.0 * torch.arange(1, m + 1, dtype=torch.float64) - m - 1)[:, None, None]
            return ((members - y[j]).abs().mean(0) - (weights * members).sum(0) / m**2)
        return self._per_lead(score)


def forecast(rate: np.ndarray, lead_times: Sequence[int], *, step_minutes: float,
             velocity: np.ndarray | None = None,
             radius: tuple[float, float] = RADIUS, **_: object) -> NeighbourhoodDistribution:
    """The neighbourhood distribution (batch shape (L, H, W)) of Lagrangian extrapolation.

    Args:
        rate: context rain rate (T >= 3, H, W) in mm/h, ``step_minutes`` apart.
        lead_times: L lead times in minutes.
        step_minutes: time between context frames.
        velocity: (2, H, W) motion in pixels per step (default: Lucas-Kanade of ``rate``).
        radius: neighbourhood half-width (pixels at lead 0, pixels per minute of lead).
    """
    field = extrapolation.forecast(rate, lead_times, step_minutes=step_minutes,
                                   velocity=velocity)
    return NeighbourhoodDistribution(field, [neighbourhood_radius(m, radius)
                                             for m in lead_times])
