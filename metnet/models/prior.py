"""The probabilistic extrapolation a network with per-lead inputs starts from.

Optical-flow extrapolation knows where the rain goes; what it does not know is how sure
to be. Given the field extrapolated to a lead time (per-lead input channel 0, the rain rate
through :func:`metnet.transforms.rate_to_input`, and channel 1, where it is known; unknown
counts as no rain), two ensembles describe each target pixel:

* the **neighbourhood**: the extrapolated rates in a square of half-width
  ``r = floor(1 + lead / 10 min)`` pixels around the pixel (by default), the
  untrained probabilistic extrapolation of :mod:`metnet.nowcasts.neighbourhood` (and of
  pysteps' ``lagrangian_probability``); it grows with lead time and with how variable the
  field is around the pixel (``configs/model/small.yaml``: ``floor(0.5 + lead / 10
  min)``, lead / 10 min rounded, a pixel narrower at 10, 20, 30 ... min, where the wide
  neighbourhood below gives the spread of large systems);
* the **centred** neighbourhood: its histogram over the bins moved along them so that its
  median bin is the bin of the pixel's own extrapolated rate (the compact bins being close
  to evenly spaced in log rate, this shifts the neighbourhood's spread onto the pixel's own
  value), so that P(R > t) >= 0.5 where extrapolation says rain above t, for thresholds
  that are bin edges.

With ``wide``, a further ensemble:

* the **wide** neighbourhood: the same with a half-width that grows faster with lead
  (``floor(0.2 lead / min)`` pixels in ``configs/model/small.yaml``: 12 px at 60 min
  against 6). The rain of a large system is uncertain over more pixels an hour ahead than
  a small shower's, and no single radius suits both: mixed evenly with the first, it
  lowers the untrained prior's CRPS from 15 min on KNMI and MeteoSwiss, where one wider
  radius would cost FMI's small showers (BENCHMARKS.md, "A wide neighbourhood beside the
  first"), and the head learns per pixel which spread fits.

With ``error`` (per-lead input channel :data:`~metnet.models.lead_inputs.ERROR_CHANNEL`:
how far the last context frame is from the frame before it extrapolated by one step, in
the input transform), another ensemble:

* the **error** ensemble: the pixel's own extrapolated value plus each of the last step's
  extrapolation errors in the 3 x 3 pixels around it (in the input transform, close to log
  rate), the spread that extrapolation has just shown where it is. It keeps dry what
  extrapolation kept dry last step and light rain light, where a neighbourhood lends a
  pixel the rates of a nearby core: at 5 min it is the better half of the prior.

Each becomes a histogram over the rain-rate bins, and the prior is their mixture with
weights ``softmax(log w0 + m)`` per pixel, ``m = 0`` for the neighbourhood: the head gives
the other ``m`` (0 at initialisation) and adds its own logit corrections (0 at
initialisation), so an untrained network forecasts the mixture of the initial weights
``w0``: even between the neighbourhoods (centred, plain and wide), and with the error
ensemble a share ``ERROR_WEIGHT * min(1, ERROR_MINUTES / lead)`` to it, the rest shared
evenly: the
last step's error describes the next few minutes' best and fades from the mixture as the
lead grows. On the test init times of
the real stores the even mixture keeps extrapolation's CSI at 1 mm/h and the
neighbourhood's CRPS at short leads (BENCHMARKS.md).

A **pinned** prior (``pinned=True``) has no centred neighbourhood: it mixes the plain
neighbourhood (and the wide one, and the error ensemble), then pins the mixture's median
to the pixel's own extrapolated bin by the least change of its quantiles: the cumulative
probability below that bin is capped just under 1/2 and that at and above it raised just
over 1/2, so ``P(R > t) >= 0.5`` exactly where extrapolation says rain above ``t`` (for
thresholds that are bin edges), and every quantile that already lies on the right side of
the pixel's own value stays where the neighbourhood puts it. Its slot of the histograms
holds the pixel's own bin (a point mass), which pins and is not mixed. With ``decisions``
(rain rates in mm/h, bin edges) it keeps extrapolation's decision only at those
thresholds: the median is pinned into the interval between the decision thresholds around
the pixel's own value, not to its bin, so ``P(R > t) >= 0.5`` exactly where extrapolation
says rain above ``t`` for each decision threshold ``t``, and the neighbourhood's spread
is left alone at every other rate. Pinning every edge moves a distribution's median onto
extrapolation's even where extrapolation is wrong an hour ahead; pinning at a warning
threshold moves only the probability of that decision (BENCHMARKS.md)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metnet.distribution import has_dry_bin, rain_to_bin
from metnet.models.lead_inputs import ERROR_CHANNEL
from metnet.transforms import input_to_rate, rate_to_input

#: Probability added to every bin before the log: small enough to cost no CRPS
#: (K * 1e-7 of the mass), large enough to keep the logits finite.
FLOOR = 1e-7
#: Neighbourhood half-width: (pixels at lead 0, pixels per minute of lead).
RADIUS = (1.0, 0.1)
#: The error ensemble's initial share of the mixture up to :data:`ERROR_MINUTES` of lead,
#: falling as 1 / lead after it (the neighbourhoods share the rest).
ERROR_WEIGHT = 0.5
ERROR_MINUTES = 5.0
#: How far from 1/2 a pinned prior keeps, by default, the cumulative probability below the
#: pixel's own bin and at it: its median stays in that bin through the floor, the log and a
#: softmax.
PIN_MARGIN = 1e-3
#: The least sum of a pixel's ``mixture * exp(corrections)`` that
#: :meth:`ExtrapolationPrior.mixture` normalises: above it, every term that matters is a
#: normal float32.
LEAST_SUM = 1e-30


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
        radius: neighbourhood half-width (pixels at lead 0, pixels per minute of lead), both
            at least 0.
        error: add the error ensemble (from per-lead input channel
            :data:`~metnet.models.lead_inputs.ERROR_CHANNEL`).
        pinned: pin the median of the mixture of the plain neighbourhood (and the wide one,
            and the error ensemble) to the pixel's own bin, instead of mixing in the
            centred neighbourhood.
        decisions: with ``pinned``, the rain rates (mm/h, inner bin edges) at which the
            prior keeps extrapolation's decision; None: every bin edge (the median pinned
            to the pixel's own bin).
        pin_margin: with ``pinned``, how far from 1/2 the cumulative probability is put on
            the side of each kept decision (in (0, 1/2)): P(R > t) >= 1/2 + margin where
            extrapolation says rain above t, <= 1/2 - margin elsewhere. The wider it is,
            the larger the correction a trained head needs to overturn extrapolation's
            decision.
        pin_minutes: the margin is ``pin_margin`` up to this lead time (minutes) and falls
            as 1 / lead after it, to no less than :data:`PIN_MARGIN`; None: ``pin_margin``
            at every lead. Extrapolation's decision is worth most at short leads.
        wide: a second, wider neighbourhood mixed beside the plain one, of half-width
            (pixels at lead 0, pixels per minute of lead), both at least 0; None: none.
            Untrained, it weighs as much as the plain one.
    """

    def __init__(self, bin_edges: Sequence[float], max_lead_minutes: float,
                 radius: tuple[float, float] = RADIUS, error: bool = False,
                 pinned: bool = False, decisions: Sequence[float] | None = None,
                 pin_margin: float = PIN_MARGIN, pin_minutes: float | None = None,
                 wide: tuple[float, float] | None = None) -> None:
        super().__init__()
        if decisions is not None and not pinned:
            raise ValueError("decision thresholds need a pinned prior")
        if not 0 < pin_margin < 0.5:
            raise ValueError(f"the prior's pin margin must lie in (0, 1/2), got {pin_margin}")
        if pin_minutes is not None and not pin_minutes > 0:
            raise ValueError(f"the prior's pin_minutes must be positive, got {pin_minutes}")
        for name, value in (("radius", radius), ("wide radius", wide)):
            if value is not None and (len(value) != 2 or min(value) < 0):
                raise ValueError(f"the prior's {name} must be two numbers of at least 0 "
                                 f"(pixels at lead 0, pixels per minute of lead), got {value}")
        self.pin_margin = float(pin_margin)
        self.pin_minutes = None if pin_minutes is None else float(pin_minutes)
        self.register_buffer("edges", torch.tensor([float(e) for e in bin_edges]),
                             persistent=False)
        # the error ensemble's members are binned in the input transform, where they are
        # made (the transform is increasing): the same bins up to rounding at the edges
        self.register_buffer("input_edges", rate_to_input(self.edges), persistent=False)
        self.dry = has_dry_bin(self.edges)
        self.radius = tuple(float(v) for v in radius)
        self.wide = None if wide is None else tuple(float(v) for v in wide)
        self.margin = max(neighbourhood_radius(max_lead_minutes, self.radius),
                          0 if self.wide is None
                          else neighbourhood_radius(max_lead_minutes, self.wide),
                          1 if error else 0)
        self.error = error
        self.pinned = pinned
        #: (K, 2) the bins between the decision thresholds around each bin (pinned only)
        self.register_buffer("intervals", decision_intervals(bin_edges, decisions),
                             persistent=False)

    @property
    def components(self) -> int:
        """Histograms per pixel and lead: (centred, plain), then the wide neighbourhood's and
        the error ensemble's if there are; pinned, the pixel's own bin in the centred one's
        place."""
        return 2 + (self.wide is not None) + self.error

    @property
    def mix_planes(self) -> int:
        """Mixture logits the head gives: one per mixed ensemble besides the plain
        neighbourhood."""
        return self.components - (2 if self.pinned else 1)

    def forward(self, mix: Tensor, histograms: Tensor, lead_minutes: Tensor) -> Tensor:
        """Prior logits (N, K, Ht, Wt), float32, ``log(mixture + FLOOR)`` (pinned:
        ``log(pinned mixture + FLOOR)``), differentiable in ``mix``: the
        :attr:`mix_planes` mixture logits (N, M, Ht, Wt) of the centred (unless pinned), the
        wide (if any) and the error (if any) ensembles against the plain neighbourhood, in
        that order, whose histograms
        (N, C, K, Ht, Wt) are those of :meth:`histograms`; C = :attr:`components`;
        ``lead_minutes`` (N,)."""
        weights = self._weights(mix, lead_minutes)[:, :, None]  # (N, C, 1, Ht, Wt)
        parts = histograms.float()
        first = 1 if self.pinned else 0  # a pinned prior's slot 0 pins, not mixed
        mixture = parts[:, first] * weights[:, first]  # a sum of products: no (N, C, K) copy
        for c in range(first + 1, self.components):
            mixture = mixture.addcmul_(parts[:, c], weights[:, c])
        if self.pinned:
            margins = self.pin_margins(lead_minutes)[:, None, None, None]
            mixture = pin_median(mixture, parts[:, 0], self.intervals, margins)
        return torch.log(mixture.add_(FLOOR))

    def logits(self, mix: Tensor, planes: Tensor, lead_minutes: Tensor) -> Tensor:
        """``self(mix, self.histograms(planes, lead_minutes), lead_minutes)``. On a CPU
        without gradients (inference) the kernel of :mod:`metnet.models.prior_kernel` makes
        it one pixel at a time, never keeping the (N, C, K, Ht, Wt) histograms, with the
        bins last in memory (a permuted (N, Ht, Wt, K) tensor): the same up to float32
        rounding."""
        if not self.runs_kernel(mix, planes):
            return self(mix, self.histograms(planes, lead_minutes), lead_minutes)
        return self.mixture(mix, planes, lead_minutes).log_()

    def runs_kernel(self, mix: Tensor, planes: Tensor) -> bool:
        """Whether :meth:`logits` of these inputs runs the CPU kernel (:meth:`mixture`)."""
        return planes.device.type == "cpu" and not (torch.is_grad_enabled() and mix.requires_grad)

    def mixture(self, mix: Tensor, planes: Tensor, lead_minutes: Tensor,
                out: Tensor | None = None, factors: Tensor | None = None) -> Tensor | None:
        """What :meth:`logits` takes the log of, from the CPU kernel: ``mixture + FLOOR`` (N,
        K, Ht, Wt) float32, the bins last in memory; no gradient. ``out``: a contiguous
        (N, Ht, Wt, K) float32 buffer to write it into (default: a new one).

        With ``factors``, the exponentials of the head's corrections in its blocks of p x p
        pixels (p a power of 2), contiguous float32 (N, Ht / p, Wt / p, p, p, K) (block row,
        block column, row and column in the block), it gives instead the corrected probabilities
        ``softmax(log(mixture + FLOOR) + corrections)`` over the bins, each pixel
        multiplied and normalised as it is made (no log, and no pass of its own over the
        distribution); None, ``out`` then spoilt, where a pixel's sum is below
        :data:`LEAST_SUM` or not finite (corrections beyond about +-80, which the softmax of
        the logits survives)."""
        weights = self._mixed_weights(mix.detach(), lead_minutes).contiguous()
        shape = (len(weights), *weights.shape[-2:], len(self.edges) - 1)
        if out is None:
            out = weights.new_empty(shape)
        elif (tuple(out.shape) != shape or out.dtype != torch.float32
              or not out.is_contiguous()):  # the kernel checks no bounds
            raise ValueError(f"the prior's mixture needs a contiguous float32 buffer {shape}, "
                             f"got {out.dtype} {tuple(out.shape)}")
        if factors is None:  # a placeholder without bins: no correction
            factors = torch.zeros(1, 1, 1, 1, 1, 0)
        else:  # the kernel checks no bounds
            p = factors.shape[3] if factors.dim() == 6 and factors.shape[3] else 1
            blocks = (shape[0], shape[1] // p, shape[2] // p, p, p, shape[3])
            if (tuple(factors.shape) != blocks or shape[1] % p or shape[2] % p or p & (p - 1)
                    or factors.dtype != torch.float32 or not factors.is_contiguous()):
                raise ValueError(f"the prior's corrections of {shape} need contiguous float32 "
                                 f"blocks (N, Ht / p, Wt / p, p, p, K), p a power of 2, got "
                                 f"{factors.dtype} {tuple(factors.shape)}")
        spoilt = prior_kernel().mixture(
            planes.float().numpy(), ERROR_CHANNEL if self.error else -1,
            np.asarray(self._radii(lead_minutes)), np.asarray(self._wide_radii(lead_minutes)),
            self.margin, self.input_edges.float().numpy(), self.dry, weights.numpy(), FLOOR,
            self.pin_margins(lead_minutes).cpu().numpy() if self.pinned
            else np.full(len(weights), -1.0, np.float32),
            self.intervals.numpy(), factors.numpy(), LEAST_SUM, out.numpy())
        return None if spoilt else out.permute(0, 3, 1, 2)

    def pin_margins(self, lead_minutes: Tensor) -> Tensor:
        """How far from 1/2 a pinned prior puts each kept decision at each lead (N,) float32,
        on the device of ``lead_minutes`` (:attr:`pin_margin`, falling as 1 / lead after
        :attr:`pin_minutes`)."""
        minutes = lead_minutes.detach().float()
        margins = torch.full_like(minutes, self.pin_margin)
        if self.pin_minutes is not None:
            fall = (self.pin_minutes / minutes).clamp(max=1)
            margins = (margins * fall).clamp(min=min(PIN_MARGIN, self.pin_margin))
        return margins

    def _radii(self, lead_minutes: Tensor) -> list[int]:
        """The neighbourhood half-width (pixels) of each lead of ``lead_minutes`` (N,)."""
        return [neighbourhood_radius(minutes, self.radius) for minutes in lead_minutes.tolist()]

    def _wide_radii(self, lead_minutes: Tensor) -> list[int]:
        """The wide neighbourhood's half-width (pixels) of each lead of ``lead_minutes``
        (N,); -1 each without one."""
        if self.wide is None:
            return [-1] * len(lead_minutes)
        return [neighbourhood_radius(minutes, self.wide) for minutes in lead_minutes.tolist()]

    def _weights(self, mix: Tensor, lead_minutes: Tensor) -> Tensor:
        """Mixture weights (N, C, Ht, Wt) float32 from the :attr:`mix_planes` mixture logits
        (N, M, Ht, Wt) (:meth:`forward`); a pinned prior's slot 0 weighs 0."""
        weights = self._mixed_weights(mix, lead_minutes)
        return F.pad(weights, (0, 0, 0, 0, 1, 0)) if self.pinned else weights

    def _mixed_weights(self, mix: Tensor, lead_minutes: Tensor) -> Tensor:
        """The weights of :meth:`_weights` without a pinned prior's slot 0, which is not
        mixed: (N, C - 1, Ht, Wt) pinned (what the CPU kernel reads, without a copy)."""
        mix = mix.float()
        plain = mix.new_zeros(len(mix), *mix.shape[-2:])
        logits = [plain] if self.pinned else [mix[:, 0], plain]  # (centred,) plain
        if self.wide is not None:  # as much as the plain one, untrained
            logits.append(mix[:, len(logits) - 1])
        if self.error:
            share = ERROR_WEIGHT * (ERROR_MINUTES / lead_minutes.float()).clamp(max=1)
            # log w0 of the error ensemble against each neighbourhood it shares the rest with
            rest = (1 - share) / len(logits)
            logits.append(mix[:, -1] + torch.log(share / rest)[:, None, None])
        return torch.softmax(torch.stack(logits, dim=1), dim=1)

    @torch.no_grad()
    def histograms(self, planes: Tensor, lead_minutes: Tensor) -> Tensor:
        """Bin frequencies (N, C, K, Ht, Wt) of the centred (pinned: a point mass in the
        pixel's own bin) and plain neighbourhoods (and of the wide neighbourhood, and of the
        error ensemble, last), C = :attr:`components`.

        Args:
            planes: (N, Cl >= 2, Ht + 2 margin, Wt + 2 margin) per-lead inputs around the
                target (channel 0 the transformed rate, channel 1 its validity, with
                ``error`` channel ``ERROR_CHANNEL`` the last step's error). Whole domains
                padded by the margin work too: a forecast computes them once, not once per
                tile.
            lead_minutes: (N,) the lead time of each plane.

        On a CPU the kernel of :mod:`metnet.models.prior_kernel` computes them, elsewhere
        torch operations: the same to the bit.
        """
        n, _, height, width = planes.shape
        ht, wt, k = height - 2 * self.margin, width - 2 * self.margin, len(self.edges) - 1
        out = planes.new_empty(n, self.components, k, ht, wt, dtype=torch.float32)
        if planes.device.type == "cpu":
            prior_kernel().histograms(*self._kernel_inputs(planes, lead_minutes), out.numpy())
            return out
        bins, radii, value, error = self._bins(planes, lead_minutes)
        self._neighbourhood_histograms(bins, radii, out, None if self.wide is None
                                       else self._wide_radii(lead_minutes))
        if self.error:
            self._error_histograms(value, error, out[:, -1])
        return out

    def _bins(self, planes: Tensor, lead_minutes: Tensor) -> tuple[Tensor, list[int],
                                                                   Tensor | None,
                                                                   Tensor | None]:
        """From the per-lead planes: each pixel's bin (N, H, W) int16, each lead's radius and,
        with the error ensemble, the value and error planes (N, H, W) float32 (unknown
        values count as no rain and no error)."""
        known = planes[:, 1].float() > 0.5
        rate = torch.where(known, input_to_rate(planes[:, 0].float()), 0.0).clamp_min(0)
        bins = rain_to_bin(rate, self.edges).to(torch.int16)
        radii = self._radii(lead_minutes)
        if not self.error:
            return bins, radii, None, None
        return (bins, radii, torch.where(known, planes[:, 0].float(), 0.0),
                torch.where(known, planes[:, ERROR_CHANNEL].float(), 0.0))

    def _kernel_inputs(self, planes: Tensor, lead_minutes: Tensor) -> tuple:
        """The arguments of the CPU kernels before their output: bins, radii, wide radii,
        margin, value, error, edges in the input transform, dry bin, pinned."""
        bins, radii, value, error = self._bins(planes, lead_minutes)
        unused = np.zeros((1, 1, 1), np.float32)
        return (bins.numpy(), np.asarray(radii), np.asarray(self._wide_radii(lead_minutes)),
                self.margin,
                unused if value is None else value.numpy(),
                unused if error is None else error.numpy(),
                self.input_edges.float().numpy(), self.dry, self.pinned)

    def _neighbourhood_histograms(self, bins: Tensor, radii: Sequence[int], out: Tensor,
                                  wide_radii: Sequence[int] | None = None) -> None:
        """Write into ``out[:, :2]`` the centred (pinned: the pixel's own bin) and plain
        neighbourhoods' bin frequencies, and with ``wide_radii`` into ``out[:, 2]`` the wide
        neighbourhood's, from the bin indices (N, Ht + 2 margin, Wt + 2 margin) of the
        planes, by running sums of indicator planes."""
        (ht, wt), k = out.shape[-2:], out.shape[2]
        # a first row and column in no bin: the running sums of the widest box start from
        # nothing (narrower ones start inside the margin, where the first row and column
        # cancel), with no padding of K planes
        bins = F.pad(bins, (1, 0, 1, 0), value=k)
        m = 1 + self.margin

        def box(i: int, r: int) -> Tensor:  # cumulative counts of lead i's boxes of radius r
            first = self.margin - r
            return _cumulative_box_counts(bins[i, first:, first:], 2 * r + 1, (ht, wt), k)

        for i, r in enumerate(radii):
            below, size = box(i, r), (2 * r + 1)**2
            centre = bins[i, m:m + ht, m:m + wt]
            if self.pinned:
                out[i, 0].zero_().scatter_(0, centre[None].long(), 1.0)
            else:
                _bin_fractions(_recentred_cumulative(below, centre, size), size, out[i, 0])
            _bin_fractions(below, size, out[i, 1])
            if wide_radii is not None:
                _bin_fractions(box(i, wide_radii[i]), (2 * wide_radii[i] + 1)**2, out[i, 2])

    def _error_histograms(self, value: Tensor, error: Tensor, out: Tensor) -> None:
        """Write into ``out`` (N, K, Ht, Wt) the bin frequencies of the error ensemble: the
        pixel's extrapolated ``value`` plus the last step's ``error`` at each of the 3 x 3
        pixels around it (both (N, Ht + 2 margin, Wt + 2 margin), in the input transform),
        binned in the input transform. Members are binned only where one can be wet (the
        pixel's own value or an error around it positive); elsewhere every member is dry."""
        (ht, wt), m = out.shape[-2:], self.margin
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
            bins = rain_to_bin(base + e[where], self.input_edges)
            out.index_put_((where[0], bins, *where[1:]), share, accumulate=True)


def pin_median(probs: Tensor, own: Tensor, intervals: Tensor | None = None,
               margin: float | Tensor = PIN_MARGIN) -> Tensor:
    """Bin probabilities (N, K, H, W) moved the least (quantile by quantile) to have their
    median in the bin where ``own`` (N, K, H, W), a point mass, is: the cumulative
    probability below that bin capped at ``1/2 - margin``, at and above it raised to
    ``1/2 + margin`` (a number, or a tensor that broadcasts against ``probs``, such as
    (N, 1, 1, 1) per lead). With ``intervals`` (K, 2) (:func:`decision_intervals`) the
    median is pinned only into the bins ``[intervals[b, 0], intervals[b, 1])`` around the
    own bin ``b``: between the decision thresholds on either side of the pixel's own value.
    Float32 whatever the dtype of ``probs`` (in bfloat16 1/2 - 0.001 rounds to 1/2: no
    pin). Differentiable in ``probs``."""
    probs, k = probs.float(), probs.shape[1]
    if isinstance(margin, Tensor):
        margin = margin.to(probs.device, torch.float32)
    if intervals is None:
        intervals = decision_intervals(range(k + 1), None)
    bounds = intervals.to(probs.device)[own.argmax(1)].movedim(-1, 1)  # (N, 2, H, W)
    bins = torch.arange(k, device=probs.device)[None, :, None, None]
    cumulative = probs.cumsum(1)
    cumulative = torch.where(bins < bounds[:, :1], cumulative.clamp(max=0.5 - margin),
                             cumulative)
    cumulative = torch.where(bins >= bounds[:, 1:] - 1,
                             cumulative.clamp(min=0.5 + margin), cumulative)
    return torch.diff(cumulative, dim=1, prepend=torch.zeros_like(cumulative[:, :1]))


def decision_intervals(edges: Sequence[float], thresholds: Sequence[float] | None) -> Tensor:
    """For each of the K bins of ``edges`` (K + 1, mm/h), ``(first, last)`` (K, 2): the bins
    ``first <= b < last`` between the decision thresholds (mm/h, each an inner bin edge) on
    either side of it; ``None``: every edge decides (each bin its own interval, the median
    pinned to it)."""
    edges = [float(e) for e in edges]
    k = len(edges) - 1
    if thresholds is None:
        cuts = list(range(1, k))
    else:
        missing = [t for t in thresholds if float(t) not in edges[1:-1]]
        if missing:
            raise ValueError(f"the prior can keep extrapolation's decision only at inner bin "
                             f"edges {edges[1:-1]} mm/h, not at {missing}")
        cuts = sorted({len(edges) - 1 - edges[::-1].index(float(t)) for t in thresholds})
    bounds = [0, *cuts, k]
    out = torch.empty(k, 2, dtype=torch.long)
    for first, last in itertools.pairwise(bounds):
        out[first:last] = torch.tensor([first, last])
    return out


def prior_kernel():
    """:mod:`metnet.models.prior_kernel`, imported (and its kernels compiled or loaded from
    numba's cache) at first use: a process that never runs the prior on a CPU pays
    nothing."""
    from metnet.models import prior_kernel as kernels

    return kernels


def _cumulative_box_counts(bins: Tensor, side: int, shape: tuple[int, int], k: int) -> Tensor:
    """Counts (K + 1, h, w) of the members in bins ``<= k - 1`` (plane k; plane 0 holds no
    member) of the square of ``side`` pixels whose top-left corner is one pixel down and
    right of each output pixel's in ``bins`` (H, W) bin indices: running sums of the K
    indicator planes along columns, then rows (a separable box filter, exact in integers).
    int16 (half the memory traffic of int32) where the counts fit: running sums that pass
    its range wrap around, and their differences, the counts, are still exact."""
    (h, w) = shape
    dtype = torch.int16 if side * side <= torch.iinfo(torch.int16).max else torch.int32
    region = bins[:h + side, :w + side]
    ks = torch.arange(k, dtype=bins.dtype, device=bins.device)[:, None, None]
    sums = (region <= ks).cumsum(2, dtype=dtype)
    sums = (sums[..., side:] - sums[..., :-side]).cumsum(1, dtype=dtype)
    out = sums.new_empty(k + 1, h, w)
    out[0] = 0
    torch.sub(sums[:, side:], sums[:, :-side], out=out[1:])
    return out


def _recentred_cumulative(below: Tensor, centre: Tensor, size: int) -> Tensor:
    """Cumulative counts (K + 1, h, w), plane 0 empty, of neighbourhoods moved along the bins
    so that their median bin is ``centre`` (h, w): each bin's count goes ``centre - median``
    bins up, mass moved past either end staying in the end bin. ``below`` (K + 1, h, w)
    counts, in plane k + 1, the members in bins ``<= k`` of a neighbourhood of ``size``
    members (plane 0: none). The compact bins are close to evenly spaced in log rate, so
    this is the neighbourhood's spread around the pixel's own extrapolated rate."""
    k = below.shape[0] - 1
    median = (below[1:] <= size // 2).sum(0, dtype=below.dtype)  # first bin holding half
    bins = torch.arange(k, dtype=below.dtype, device=below.device)[:, None, None]
    source = (bins - centre.to(below.dtype) + median + 1).clamp_(0, k)  # 0: none below
    source[-1] = k  # the last bin holds every member
    out = torch.empty_like(below)
    out[0] = 0
    torch.gather(below, 0, source.long(), out=out[1:])
    return out


def _bin_fractions(cumulative: Tensor, size: int, out: Tensor) -> None:
    """Write into ``out`` (K, h, w) the fraction of ``size`` members in each bin, from their
    cumulative counts (K + 1, h, w) over the bins (plane 0: none)."""
    torch.div(cumulative[1:] - cumulative[:-1], size, out=out)
