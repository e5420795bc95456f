"""Verification scores accumulated over batches, per lead time, reduced across DDP ranks.

States are sums (counts, sums of scores), registered with torchmetrics'
``dist_reduce_fx="sum"``, so a score computed on several ranks equals the
score computed on all their data at once. The categorical scores follow
pysteps' definitions (``pysteps.verification.det_cat_fct``), against which
they are tested. :class:`CalibrationStatistics` accumulates what fitting a
:class:`metnet.calibration.Calibration` needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from metnet.calibration import CRITERIA, DEFAULT_TEMPERATURES, REPORT_KEYS, Calibration
from metnet.distribution import RainRateDistribution, check_edges, fraction_below, rain_to_bin


class ContingencyScores(Metric):
    """Hits, misses and false alarms per (lead, threshold) -> CSI, POD, FAR.

    Args:
        num_leads: L, the lead times scored.
        thresholds: rain-rate thresholds in mm/h (an event is rate > threshold, as
            in pysteps: a rate exactly on a threshold is no event).
    """

    full_state_update = False

    def __init__(self, num_leads: int, thresholds: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "thresholds", torch.tensor(list(thresholds), dtype=torch.float32), persistent=False
        )
        shape = (num_leads, len(thresholds))
        for name in ("hits", "misses", "false_alarms"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, forecast_event: Tensor, observed: Tensor) -> None:
        """Add one batch.

        Args:
            forecast_event: (B, L, nT, H, W) bool, the forecast says "rate > threshold".
            observed: (B, L, H, W) observed rate in mm/h, NaN where not observed (ignored).
        """
        valid = ~torch.isnan(observed)
        thresholds = self.thresholds.to(observed.dtype)[None, None, :, None, None]
        event = observed.unsqueeze(2) > thresholds
        valid = valid.unsqueeze(2)
        dims = (0, 3, 4)
        self.hits += (forecast_event & event & valid).sum(dims).double()
        self.misses += (~forecast_event & event & valid).sum(dims).double()
        self.false_alarms += (forecast_event & ~event & valid).sum(dims).double()

    def compute(self) -> dict[str, Tensor]:
        """Scores per (lead, threshold) and pooled over leads (key suffix ``_all``); NaN
        where undefined (no event forecast or observed)."""
        out = {}
        for suffix, (h, m, f) in {
            "": (self.hits, self.misses, self.false_alarms),
            "_all": (self.hits.sum(0), self.misses.sum(0), self.false_alarms.sum(0)),
        }.items():
            out[f"csi{suffix}"] = h / (h + m + f)
            out[f"pod{suffix}"] = h / (h + m)
            out[f"far{suffix}"] = f / (h + f)
        return out


class LeadMean(Metric):
    """Mean of a per-pixel score per lead time, over observed pixels.

    Args:
        num_leads: L, the lead times scored.
    """

    full_state_update = False

    def __init__(self, num_leads: int) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(num_leads, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_leads, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, score: Tensor, valid: Tensor) -> None:
        """Add (B, L, H, W) per-pixel scores where ``valid`` (same shape, bool)."""
        self.total += torch.where(valid, score, 0.0).sum((0, 2, 3)).double()
        self.count += valid.sum((0, 2, 3)).double()

    def compute(self) -> dict[str, Tensor]:
        """Mean per lead (key ``lead``) and pooled over leads (key ``all``)."""
        return {"lead": self.total / self.count, "all": self.total.sum() / self.count.sum()}


#: How much lower a store's own temperature must make its mean criterion (a fraction of
#: the pooled temperature's) to replace the pooled temperature (:meth:`CalibrationStatistics.
#: compute`).
FALLBACK_CRITERION_GAIN = 0.02
#: How much higher a store's own cut must make its CSI to replace the pooled cut.
FALLBACK_CSI_GAIN = 0.02


class CalibrationStatistics(Metric):
    """Sufficient statistics for fitting a :class:`Calibration` (feed validation batches).

    Args:
        bin_edges: K+1 bin edges in mm/h of the network's logits.
        lead_times: L lead times in minutes that batches may contain.
        thresholds: N rain-rate thresholds in mm/h for the probability cuts.
        temperatures: M candidate temperatures; must include 1.0.
        probability_bins: P equal bins of [0, 1] for the exceedance histograms; even, so
            that 0.5 is a bin edge (a candidate cut).
        criterion: what the temperature minimises (:data:`CRITERIA`).

    States (float64, summed across ranks): ``ce_sum`` and ``crps_sum`` (M, L) and ``count``
    (L,) for the mean cross-entropy and CRPS; per (M, L, N, P) histogram bin ``hist_count``
    (pixels), ``hist_events`` (observed events) and ``hist_prob`` (sum of P(R > t)); and
    ``brier_sum`` (M, L, N), the exact sum of squared probability errors.
    """

    full_state_update = False

    def __init__(self, bin_edges: Sequence[float], lead_times: Sequence[int],
                 thresholds: Sequence[float] = (0.1, 1.0, 4.0, 8.0),
                 temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                 probability_bins: int = 100, criterion: str = "cross_entropy") -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.criterion = criterion
        check_edges(bin_edges)
        _check_arguments(lead_times, thresholds, temperatures, probability_bins)
        self.lead_values = [int(m) for m in lead_times]
        self.threshold_values = [float(t) for t in thresholds]
        self.temperature_values = [float(t) for t in temperatures]
        self.probability_bins = probability_bins
        edges = torch.tensor([float(e) for e in bin_edges], dtype=torch.float64)
        self.register_buffer("edges", edges.float(), persistent=False)
        self.register_buffer("leads", torch.tensor(self.lead_values), persistent=False)
        self.register_buffer("thresholds", torch.tensor(self.threshold_values),
                             persistent=False)
        self.register_buffer("above", _fraction_above(edges, self.threshold_values).float(),
                             persistent=False)
        self.register_buffer("cuts", torch.arange(probability_bins + 1, dtype=torch.float64)
                             / probability_bins, persistent=False)
        m, n, k = len(temperatures), len(lead_times), len(thresholds)
        shapes = {"ce_sum": (m, n), "crps_sum": (m, n), "count": (n,),
                  "hist_count": (m, n, k, probability_bins),
                  "hist_events": (m, n, k, probability_bins),
                  "hist_prob": (m, n, k, probability_bins), "brier_sum": (m, n, k)}
        for name, shape in shapes.items():
            self.add_state(name, default=torch.zeros(shape, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, lead_times: Tensor) -> None:
        """Add one batch.

        Args:
            logits: (B, L', K, H, W) bin logits (cast to float32).
            target: (B, L', H, W) observed rain rate in mm/h, NaN where not observed.
            lead_times: (B, L') or (L',) lead times in minutes, each one of ``lead_times``
                given at construction (else ``ValueError``).
        """
        if logits.ndim != 5 or logits.shape[:2] + logits.shape[3:] != target.shape:
            raise ValueError(f"logits (B, L, K, H, W) and target (B, L, H, W) do not match: "
                             f"{tuple(logits.shape)} and {tuple(target.shape)}")
        if logits.shape[2] != self.edges.numel() - 1:
            raise ValueError(f"{self.edges.numel() - 1} bins expected, got {logits.shape[2]}")
        lead = self._lead_index(lead_times, target.shape[:2])  # (B, L')
        valid = ~torch.isnan(target)
        x = logits.float().movedim(2, -1)[valid]  # (V, K)
        rate = target[valid].float()  # (V,)
        lead = lead[:, :, None, None].expand_as(target)[valid]  # (V,)
        self.count += torch.bincount(lead, minlength=len(self.lead_values)).double()
        events = (rate[:, None] > self.thresholds).double()  # (V, N)
        bins = rain_to_bin(rate, self.edges)[:, None]  # (V, 1)
        for i, temperature in enumerate(self.temperature_values):
            log_p = torch.log_softmax(x / temperature, dim=-1)  # (V, K)
            ce = -log_p.gather(-1, bins).squeeze(-1)
            self.ce_sum[i] += torch.bincount(lead, ce.double(), minlength=len(self.lead_values))
            crps = RainRateDistribution(log_p, self.edges, dim=-1).crps(rate)
            self.crps_sum[i] += torch.bincount(lead, crps.double(),
                                               minlength=len(self.lead_values))
            exceed = (log_p.exp() @ self.above).double().clamp(0.0, 1.0)  # (V, N)
            self._add_histograms(i, lead, exceed, events)

    def _lead_index(self, lead_times: Tensor, shape: torch.Size) -> Tensor:
        """(B, L') index into ``lead_times`` of each batch lead; ``ValueError`` if unknown."""
        minutes = torch.as_tensor(lead_times, device=self.leads.device).expand(shape)
        match = minutes[..., None] == self.leads  # (B, L', L)
        known = match.any(-1)
        if not bool(known.all()):
            unknown = sorted(set(minutes[~known].tolist()))
            raise ValueError(f"lead times {unknown} min are not among the calibrated "
                             f"{self.lead_values}")
        return match.long().argmax(-1)

    def _add_histograms(self, i: int, lead: Tensor, exceed: Tensor, events: Tensor) -> None:
        """Add (V, N) exceedance probabilities and observed events at temperature ``i``."""
        n, p = len(self.threshold_values), self.probability_bins
        bucket = torch.bucketize(exceed, self.cuts[1:-1], right=True)  # (V, N) in 0..P-1
        cell = lead[:, None] * n + torch.arange(n, device=lead.device)  # (V, N)
        flat = (cell * p + bucket).flatten()
        size = len(self.lead_values) * n * p
        shape = self.hist_count.shape[1:]
        self.hist_count[i] += torch.bincount(flat, minlength=size).double().reshape(shape)
        self.hist_events[i] += torch.bincount(flat, events.flatten(), size).reshape(shape)
        self.hist_prob[i] += torch.bincount(flat, exceed.flatten(), size).reshape(shape)
        squared = (exceed - events).square().flatten()
        self.brier_sum[i] += torch.bincount(cell.flatten(), squared, size // p).reshape(shape[:2])

    def compute(self, fallback: Calibration | None = None) -> Calibration:
        """The temperature with the lowest mean criterion per lead, then at that
        temperature the CSI-maximising cut per (lead, threshold), with the report of the
        raw (T = 1, p = 0.5) and calibrated scores. A lead without data keeps T = 1; a
        (lead, threshold) without observed events keeps p* = 0.5 (the fallback's, with one).

        With a ``fallback`` (the pooled calibration, when these statistics are one store's),
        its temperature is kept unless this data's own choice lowers the mean criterion by
        :data:`FALLBACK_CRITERION_GAIN` of it, and its cut unless this data's own raises
        CSI by :data:`FALLBACK_CSI_GAIN`: a store's validation windows are few and of one
        event or two, and an own fit that barely beats the pooled one is mostly their noise.
        (The metric caches what it computes until the next update: one call per fit.)"""
        lead_range = torch.arange(len(self.lead_values), device=self.count.device)
        raw = torch.full_like(lead_range, self.temperature_values.index(1.0))
        mean_ce, mean_crps = self.ce_sum / self.count, self.crps_sum / self.count  # (M, L)
        criterion = mean_ce if self.criterion == "cross_entropy" else mean_crps
        chosen = torch.where(self.count > 0, criterion.nan_to_num(math.inf).argmin(0), raw)
        half = self.probability_bins // 2
        if fallback is not None:
            chosen = self._fallback_temperature(fallback, criterion, chosen, lead_range)
        cut = self._best_cut(chosen, lead_range, default=half)  # (L, N)
        if fallback is not None:
            cut = self._fallback_cut(fallback, chosen, cut, lead_range)
        report = {}
        for suffix, temp, j in (("raw", raw, torch.full_like(cut, half)),
                                ("calibrated", chosen, cut)):
            scores = self._scores(temp, lead_range, j)
            scores["cross_entropy"] = mean_ce[temp, lead_range][:, None].expand_as(cut)
            scores["crps"] = mean_crps[temp, lead_range][:, None].expand_as(cut)
            report.update({f"{k}_{suffix}": v.tolist() for k, v in scores.items()})
        temperatures = torch.tensor(self.temperature_values)
        return Calibration(self.lead_values, self.threshold_values,
                           temperatures[chosen.cpu()].tolist(), self.cuts[cut].tolist(),
                           {k: report[k] for k in REPORT_KEYS})

    def _fallback_temperature(self, fallback: Calibration, criterion: Tensor, chosen: Tensor,
                              lead_range: Tensor) -> Tensor:
        """(L,) temperature indices: ``fallback``'s where the own ``chosen`` does not lower
        the mean ``criterion`` (M, L) by :data:`FALLBACK_CRITERION_GAIN` of it."""
        if (fallback.lead_times, fallback.thresholds) != (self.lead_values,
                                                          self.threshold_values):
            raise ValueError("the fallback calibration has other lead times or thresholds")
        grid = torch.tensor(self.temperature_values)
        theirs = torch.tensor([int((grid - t).abs().argmin()) for t in fallback.temperature],
                              device=chosen.device)
        if not torch.allclose(grid[theirs.cpu()].double(),
                              torch.tensor(fallback.temperature, dtype=torch.float64),
                              rtol=1e-6):
            raise ValueError("the fallback calibration's temperatures are not on the grid "
                             f"{self.temperature_values}")
        own, pooled = criterion[chosen, lead_range], criterion[theirs, lead_range]
        return torch.where(own < (1.0 - FALLBACK_CRITERION_GAIN) * pooled, chosen, theirs)

    def _fallback_cut(self, fallback: Calibration, temp: Tensor, cut: Tensor,
                      lead_range: Tensor) -> Tensor:
        """(L, N) cut indices: ``fallback``'s where the own ``cut`` does not raise CSI at
        temperatures ``temp`` by :data:`FALLBACK_CSI_GAIN`."""
        cuts = torch.tensor(fallback.probability_threshold, dtype=torch.float64)
        theirs = (cuts * self.probability_bins).round()
        if not torch.allclose(theirs, cuts * self.probability_bins, atol=1e-6) or bool(
                (theirs >= self.probability_bins).any()):
            raise ValueError(f"the fallback calibration's cuts are not among the "
                             f"{self.probability_bins} candidate cuts below 1")
        theirs = theirs.long().to(cut.device)
        csi = self._csi_by_cut(temp, lead_range)  # (L, N, P)
        gain = (csi.gather(-1, cut[..., None]) - csi.gather(-1, theirs[..., None])).squeeze(-1)
        return torch.where(gain > FALLBACK_CSI_GAIN, cut, theirs)

    def _csi_by_cut(self, temp: Tensor, lead_range: Tensor) -> Tensor:
        """(L, N, P) CSI of the forecast ``P >= cuts[j]`` for each cut j; NaN if undefined."""
        count = self.hist_count[temp, lead_range]
        events = self.hist_events[temp, lead_range]
        hits = events.flip(-1).cumsum(-1).flip(-1)  # events with P >= cut
        forecast = count.flip(-1).cumsum(-1).flip(-1)
        return hits / (events.sum(-1, keepdim=True) + forecast - hits)

    def _best_cut(self, temp: Tensor, lead_range: Tensor, default: int) -> Tensor:
        """(L, N) index of the CSI-maximising cut, ties to the cut closest to 0.5;
        ``default`` where no event was observed. The cut 0 (rain forecast everywhere, the
        CSI-maximiser of a forecast without skill for a rare event) is not a candidate."""
        csi = self._csi_by_cut(temp, lead_range).nan_to_num(-1.0)
        csi[..., 0] = -1.0
        best = csi == csi.max(-1, keepdim=True).values
        distance = torch.where(best, (self.cuts[:-1] - 0.5).abs(), math.inf)
        observed = self.hist_events[temp, lead_range].sum(-1) > 0
        return torch.where(observed, distance.argmin(-1), default)

    def _scores(self, temp: Tensor, lead_range: Tensor, cut: Tensor) -> dict[str, Tensor]:
        """(L, N) CSI at ``cut``, reliability and Brier score at temperatures ``temp``."""
        csi = self._csi_by_cut(temp, lead_range).gather(-1, cut[..., None]).squeeze(-1)
        count = self.hist_count[temp, lead_range]  # (L, N, P)
        gap = (self.hist_prob[temp, lead_range] - self.hist_events[temp, lead_range]).square()
        total = count.sum(-1)
        reliability = (gap / count.clamp_min(1.0)).sum(-1) / total
        return {"csi": csi, "reliability": reliability,
                "brier": self.brier_sum[temp, lead_range] / total}


def _check_arguments(lead_times: Sequence[int], thresholds: Sequence[float],
                     temperatures: Sequence[float], probability_bins: int) -> None:
    """Raise ``ValueError`` on an unusable :class:`CalibrationStatistics` configuration."""
    if not lead_times or len(set(lead_times)) != len(lead_times):
        raise ValueError(f"lead_times must be non-empty and unique, got {list(lead_times)}")
    if not thresholds:
        raise ValueError("at least one threshold is needed")
    if 1.0 not in [float(t) for t in temperatures] or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive and include 1.0, got "
                         f"{list(temperatures)}")
    if probability_bins < 2 or probability_bins % 2:
        raise ValueError(f"probability_bins must be even and >= 2, got {probability_bins}")


def _fraction_above(edges: Tensor, thresholds: Sequence[float]) -> Tensor:
    """(K, N) fraction of each bin above each threshold (mm/h) under the piecewise-uniform
    density, so that ``probs @ result`` is P(R > t) as in
    :meth:`~metnet.distribution.RainRateDistribution.exceedance`."""
    t = torch.tensor(thresholds, dtype=edges.dtype)
    return 1.0 - fraction_below(t[:, None], edges).T
