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

With ``error`` (per-lead input channel :data:`~metnet.models.lead_inputs.ERROR_CHANNEL`:
how far the last context frame is from the frame before it extrapolated by one step, in
the input transform), a third ensemble:

* the **error** ensemble: the pixel's own extrapolated value plus each of the last step's
  extrapolation errors in the 3 x 3 pixels around it (in the input transform, close to log
  rate), the spread that extrapolation has just shown where it is. It keeps dry what
  extrapolation kept dry last step and light rain light, where a neighbourhood lends a
  pixel the rates of a nearby core: at 5 min it is the better half of the prior.

Each becomes a histogram over the rain-rate bins, and the prior is their mixture with
weights ``softmax(log w0 + m)`` per pixel, ``m = 0`` for the neighbourhood: the head gives
the other ``m`` (0 at initialisation) and adds its own logit corrections (0 at
initialisation), so an untrained network forecasts the mixture of the initial weights
``w0``: even between the centred and plain neighbourhoods, and with the error ensemble a
share ``ERROR_WEIGHT * min(1, ERROR_MINUTES / lead)`` to it, the rest shared evenly: the
last step's error describes the next few minutes' best and fades from the mixture as the
lead grows. On the test init times of
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
from metnet.models.lead_inputs import ERROR_CHANNEL
from metnet.transforms import input_to_rate

#: Probability added to every bin before the log: small enough to cost no CRPS
#: (K * 1e-7 of the mass), large enough to keep the logits finite.
FLOOR = 1e-7
#: Neighbourhood half-width: (pixels at lead 0, pixels per minute of lead).
RADIUS = (1.0, 0.1)
#: The error ensemble's initial share of the mixture up to :data:`ERROR_MINUTES` of lead,
#: falling as 1 / lead after it (the neighbourhoods share the rest).
ERROR_WEIGHT = 0.5
ERROR_MINUTES = 5.0


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
        error: add the error ensemble (from per-lead input channel
            :data:`~metnet.models.lead_inputs.ERROR_CHANNEL`).
    """

    def __init__(self, bin_edges: Sequence[float], max_lead_minutes: float,
                 radius: tuple[float, float] = RADIUS, error: bool = False) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor([float(e) for e in bin_edges]),
                             persistent=False)
        self.radius = tuple(float(v) for v in radius)
        self.margin = max(neighbourhood_radius(max_lead_minutes, self.radius), 1 if error else 0)
        self.error = error

    @property
    def components(self) -> int:
        """Ensembles in the mixture: (centred, plain) or (centred, plain, error)."""
        return 3 if self.error else 2

    def forward(self, mix: Tensor, histograms: Tensor, lead_minutes: Tensor) -> Tensor:
        """Prior logits (N, K, Ht, Wt), float32, ``log(mixture + FLOOR)``, differentiable in
        ``mix``: the mixture logits (N, C - 1, Ht, Wt) of the centred (and error) ensembles
        against the plain neighbourhood, whose histograms (N, C, K, Ht, Wt) are those of
        :meth:`histograms`; C = :attr:`components`; ``lead_minutes`` (N,)."""
        mix = mix.float()
        logits = [mix[:, 0], torch.zeros_like(mix[:, 0])]  # centred, plain
        if self.error:
            share = ERROR_WEIGHT * (ERROR_MINUTES / lead_minutes.float()).clamp(max=1)
            offset = torch.log(2 * share / (1 - share))[:, None, None]  # log w0: error/centred
            logits.append(mix[:, 1] + offset)
        weights = torch.softmax(torch.stack(logits, dim=1), dim=1)[:, :, None]  # (N, C, 1, ...)
        parts = histograms.float()
        mixture = parts[:, 0] * weights[:, 0]  # a sum of products: no (N, C, K) copy
        for c in range(1, self.components):
            mixture = mixture.addcmul_(parts[:, c], weights[:, c])
        return torch.log(mixture.add_(FLOOR))

    @torch.no_grad()
    def histograms(self, planes: Tensor, lead_minutes: Tensor) -> Tensor:
        """Bin frequencies (N, C, K, Ht, Wt) of the centred and plain neighbourhoods (and
        of the error ensemble), C = :attr:`components`.

        Args:
            planes: (N, Cl >= 2, Ht + 2 margin, Wt + 2 margin) per-lead inputs around the
                target (channel 0 the transformed rate, channel 1 its validity, with
                ``error`` channel ``ERROR_CHANNEL`` the last step's error). Whole domains
                padded by the margin work too: a forecast computes them once, not once per
                tile.
            lead_minutes: (N,) the lead time of each plane.
        """
        known = planes[:, 1].float() > 0.5
        rate = torch.where(known, input_to_rate(planes[:, 0].float()), 0.0).clamp_min(0)
        n, height, width = rate.shape
        ht, wt, k = height - 2 * self.margin, width - 2 * self.margin, len(self.edges) - 1
        bins = rain_to_bin(rate, self.edges)  # (N, H, W), once per pixel, not per member
        ks = torch.arange(k, dtype=bins.dtype, device=bins.device)[:, None, None]
        out = rate.new_empty(n, self.components, k, ht, wt)
        if self.error:
            self._error_histograms(planes, known, out[:, 2])
        for i, minutes in enumerate(lead_minutes.tolist()):
            r = neighbourhood_radius(minutes, self.radius)
            below = _box_counts(bins[i] <= ks, self.margin - r, 2 * r + 1, (ht, wt))
            centre = bins[i, self.margin:self.margin + ht, self.margin:self.margin + wt]
            size = (2 * r + 1) ** 2
            _bin_fractions(_recentred_cumulative(below, centre, size), size, out[i, 0])
            _bin_fractions(below, size, out[i, 1])
        return out

    def _error_histograms(self, planes: Tensor, known: Tensor, out: Tensor) -> None:
        """Write into ``out`` (N, K, Ht, Wt) the bin frequencies of the error ensemble: the
        pixel's extrapolated value plus the last step's error at each of the 3 x 3 pixels
        around it, in the input transform (unknown values count as no rain and no error).
        Members are binned only where one can be wet (the pixel's own value or an error
        around it positive); elsewhere every member is dry."""
        (ht, wt), m = out.shape[-2:], self.margin
        value = torch.where(known, planes[:, 0].float(), 0.0)
        error = torch.where(known, planes[:, ERROR_CHANNEL].float(), 0.0)
        own = value[:, m:m + ht, m:m + wt]
        around = [error[:, m + dr:m + dr + ht, m + dc:m + dc + wt]
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        wet = own > 0
        for e in around:
            wet |= e > 0
        out.zero_()
        out[:, 0] = ~wet
        where = wet.nonzero(as_tuple=True)
        base, share = own[where], own.new_tensor(1 / len(around))
        for e in around:
            bins = rain_to_bin(input_to_rate(base + e[where]).clamp_min(0), self.edges)
            out.index_put_((where[0], bins, *where[1:]), share, accumulate=True)


def _box_counts(indicator: Tensor, first: int, size: int, shape: tuple[int, int]) -> Tensor:
    """Sums (C, h, w) of the boolean planes ``indicator`` (C, H, W) over the square of side
    ``size`` whose top-left corner is ``first`` pixels down and right of each output pixel's:
    running sums along columns, then rows (a separable box filter, exact in integers). The
    running sums reach W and ``size`` x H: int16 (half the memory traffic) where they fit,
    int32 otherwise."""
    (h, w), last = shape, first + size
    height, width = indicator.shape[1:]
    dtype = (torch.int16 if max(width, size * height) <= torch.iinfo(torch.int16).max
             else torch.int32)
    sums = F.pad(indicator.cumsum(2, dtype=dtype), (1, 0))
    sums = sums[..., last:last + w] - sums[..., first:first + w]
    sums = F.pad(sums.cumsum(1, dtype=dtype), (0, 0, 1, 0))
    return sums[:, last:last + h] - sums[:, first:first + h]


def _recentred_cumulative(below: Tensor, centre: Tensor, size: int) -> Tensor:
    """Cumulative counts (K, h, w) of neighbourhoods moved along the bins so that their
    median bin is ``centre`` (h, w): each bin's count goes ``centre - median`` bins up, mass
    moved past either end staying in the end bin. ``below`` (K, h, w) counts the members in
    bins ``<= k`` of a neighbourhood of ``size`` members. The compact bins are close to
    evenly spaced in log rate, so this is the neighbourhood's spread around the pixel's own
    extrapolated rate."""
    k = below.shape[0]
    median = (below <= size // 2).sum(0, dtype=below.dtype)  # first bin holding half (size odd)
    bins = torch.arange(k, dtype=below.dtype, device=below.device)[:, None, None]
    source = (bins - centre.to(below.dtype) + median + 1).clamp_(0, k)  # 0: none below
    source[-1] = k  # the last bin holds every member
    return F.pad(below, (0, 0, 0, 0, 1, 0)).gather(0, source.long())


def _bin_fractions(cumulative: Tensor, size: int, out: Tensor) -> None:
    """Write into ``out`` (K, h, w) the fraction of ``size`` members in each bin, from their
    cumulative counts (K, h, w) over the bins."""
    out[0] = cumulative[0]
    torch.sub(cumulative[1:], cumulative[:-1], out=out[1:])
    out.div_(size)
