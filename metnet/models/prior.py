"""The probabilistic extrapolation a network with per-lead inputs starts from.

Optical-flow extrapolation knows where the rain goes; what it does not know is how sure
to be. Given the field extrapolated to a lead time (per-lead input channel 0, the rain rate
through :func:`metnet.transforms.rate_to_input`, and channel 1, where it is known; unknown
counts as no rain), two ensembles describe each target pixel:

* the **neighbourhood**: the extrapolated rates in a square of half-width
  ``r = floor(1 + lead / 10 min)`` pixels around the pixel (by default), the
  untrained probabilistic extrapolation of :mod:`metnet.nowcasts.neighbourhood` (and of
  pysteps' ``lagrangian_probability``); it grows with lead time and with how variable the
  field is around the pixel;
* the **centred** neighbourhood: its histogram over the bins moved along them so that its
  median bin is the bin of the pixel's own extrapolated rate (the compact bins being close
  to evenly spaced in log rate, this shifts the neighbourhood's spread onto the pixel's own
  value), so that P(R > t) >= 0.5 where extrapolation says rain above t, for thresholds
  that are bin edges.

Each becomes a histogram over the rain-rate bins, and the prior is their mixture
``w * centred + (1 - w) * neighbourhood`` with ``w = sigmoid(m)`` per pixel; the head gives
``m`` (0 at initialisation: an even mixture) and adds its own logit corrections (0 at
initialisation), so an untrained network forecasts this mixture. On the test init times of
the real stores the even mixture keeps extrapolation's CSI at 1 mm/h and the
neighbourhood's CRPS at short leads (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metnet.distribution import rain_to_bin
from metnet.transforms import input_to_rate

#: Probability added to every bin before the log: small enough to cost no CRPS
#: (K * 1e-7 of the mass), large enough to keep the logits finite.
FLOOR = 1e-7
#: Neighbourhood half-width: (pixels at lead 0, pixels per minute of lead).
RADIUS = (1.0, 0.1)


def neighbourhood_radius(lead_minutes: float, radius: tuple[float, float] = RADIUS) -> int:
    """Half-width (pixels) of the square neighbourhood at a lead time (minutes):
    ``floor(radius[0] + radius[1] * lead)``."""
    return int(math.floor(radius[0] + radius[1] * lead_minutes))


def square_neighbourhoods(field: Tensor, r: int, padding: int = 0) -> Tensor:
    """The (2r+1)^2 values around each pixel of fields (n, H, W): (n, M, H' W'), H' = H + 2
    padding - 2 r (zero padding: no rain outside)."""
    return F.unfold(field[:, None], 2 * r + 1, padding=padding)


class ExtrapolationPrior(nn.Module):
    """Prior logits (N, K, Ht, Wt) from per-lead input planes around the target.

    Args:
        bin_edges: K+1 bin edges in mm/h (a dry bin keeps dry neighbours a point mass).
        max_lead_minutes: the longest lead time; fixes the margin the planes need.
        radius: neighbourhood half-width (pixels at lead 0, pixels per minute of lead).
    """

    def __init__(self, bin_edges: Sequence[float], max_lead_minutes: float,
                 radius: tuple[float, float] = RADIUS) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor([float(e) for e in bin_edges]),
                             persistent=False)
        self.radius = tuple(float(v) for v in radius)
        self.margin = neighbourhood_radius(max_lead_minutes, self.radius)

    def forward(self, mix: Tensor, histograms: Tensor) -> Tensor:
        """Prior logits (N, K, Ht, Wt), float32, ``log(mixture + FLOOR)``, differentiable in
        ``mix``: the mixture logit (N, Ht, Wt) of the centred ensemble, whose histograms
        (N, 2, K, Ht, Wt) are those of :meth:`histograms` (centred, plain)."""
        weight = torch.sigmoid(mix.float())[:, None]
        centred, plain = histograms.float().unbind(1)
        return torch.log(weight * centred + (1 - weight) * plain + FLOOR)

    @torch.no_grad()
    def histograms(self, planes: Tensor, lead_minutes: Tensor) -> Tensor:
        """Bin frequencies (N, 2, K, Ht, Wt) of the centred and plain neighbourhoods.

        Args:
            planes: (N, Cl >= 2, Ht + 2 margin, Wt + 2 margin) per-lead inputs around the
                target (channel 0 the transformed rate, channel 1 its validity). Whole
                domains padded by the margin work too: a forecast computes them once, not
                once per tile.
            lead_minutes: (N,) the lead time of each plane.
        """
        known = planes[:, 1].float() > 0.5
        rate = torch.where(known, input_to_rate(planes[:, 0].float()), 0.0).clamp_min(0)
        n, height, width = rate.shape
        ht, wt = height - 2 * self.margin, width - 2 * self.margin
        k = len(self.edges) - 1
        bins = rain_to_bin(rate, self.edges)  # (N, H, W), once per pixel, not per member
        counts = torch.zeros(n, k, height, width, dtype=torch.int32, device=rate.device)
        counts.scatter_(1, bins[:, None], 1)  # (N, K, H, W) one-hot
        # integral image; int32 holds any count of a radar domain, and int64 doubles the cost
        table = F.pad(counts.cumsum(2, dtype=torch.int32).cumsum(3, dtype=torch.int32),
                      (1, 0, 1, 0))
        plain = rate.new_empty(n, k, ht, wt)
        radii = [neighbourhood_radius(m, self.radius) for m in lead_minutes.tolist()]
        for i, r in enumerate(radii):  # a box sum per bin: four corners of the table
            lo, size = self.margin - r, 2 * r + 1
            rows, cols = slice(lo + size, lo + size + ht), slice(lo + size, lo + size + wt)
            before_r, before_c = slice(lo, lo + ht), slice(lo, lo + wt)
            box = (table[i, :, rows, cols] - table[i, :, before_r, cols]
                   - table[i, :, rows, before_c] + table[i, :, before_r, before_c])
            plain[i] = box / size**2
        centre = bins[:, self.margin:self.margin + ht, self.margin:self.margin + wt]
        centred = _recentre(plain.reshape(n, k, -1), centre.reshape(n, 1, -1))
        return torch.stack([centred.reshape(n, k, ht, wt), plain], dim=1)


def _recentre(histogram: Tensor, centre: Tensor) -> Tensor:
    """Histograms (n, K, P) moved along the bins so that their median bin is ``centre``
    (n, 1, P): each bin's mass goes ``centre - median`` bins up (mass moved past either end
    stays in the end bin). The compact bins are close to evenly spaced in log rate, so this
    is the neighbourhood's spread around the pixel's own extrapolated rate."""
    k = histogram.shape[1]
    median = (histogram.cumsum(1) < 0.5).sum(1, keepdim=True)  # first bin reaching half
    target = (torch.arange(k, device=histogram.device)[None, :, None] + centre - median)
    return torch.zeros_like(histogram).scatter_add_(1, target.clamp(0, k - 1), histogram)
