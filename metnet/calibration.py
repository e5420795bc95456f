"""Post-hoc calibration of the rain-rate distribution: a temperature per lead time and a
CSI-maximising probability threshold per (lead time, rain-rate threshold).

Why a temperature per lead: dividing the logits by T > 0 keeps a proper categorical
distribution over the rain-rate bins, so every derived quantity (mean, quantiles,
exceedance probabilities, CRPS) stays mutually consistent; only the sharpness changes.
The network grows less certain with lead time and is typically over- or under-confident
by a different amount at each lead, hence one T per lead, chosen from a grid as the one
with the lowest mean of the network's training loss (a proper score: the cross-entropy,
or the CRPS for a network trained on it; a temperature chosen by the log score broadens
distributions that the CRPS would keep sharp).

Why CSI-maximising cuts: a categorical forecast "rate > t" needs a cut p* on P(R > t).
0.5 is the natural default, but for rare, hard-to-place events CSI is usually higher with
a lower cut. MetNet (Sønderby et al., 2020; Espeholt et al., 2022) chose its probability
thresholds this way, per lead time and rain rate, to maximise the categorical score on
held-out data. The cut leaves the distribution itself untouched.

Fitting: :class:`CalibrationStatistics` accumulates, in one pass over batches, the
cross-entropy for every candidate temperature and histograms of the exceedance
probabilities with their observed outcomes; :meth:`CalibrationStatistics.compute` turns
them into a :class:`Calibration`. Its states are sums reduced across DDP ranks. Feed it
only VALIDATION batches: fitted on training data it calibrates the training fit, and
fitted on test data it makes the test scores optimistic.

Conventions: lead times are in minutes, rain rates and thresholds in mm/h. As in
:mod:`metnet.metrics` and pysteps' categorical scores, an observed event is ``rate > t``
(a rate exactly on the threshold is no event), and a forecast event is ``P(R > t) >= p``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from tqdm.auto import tqdm

from metnet.distribution import RainRateDistribution, check_edges, fraction_below, rain_to_bin

#: Candidate temperatures; 1.0 (the uncalibrated network) must be among them.
DEFAULT_TEMPERATURES: tuple[float, ...] = (
    0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5,
)  # fmt: skip

#: Keys of :attr:`Calibration.report` written by :meth:`CalibrationStatistics.compute`;
#: ``_raw`` is T = 1 and p = 0.5, ``_calibrated`` the chosen T and p*.
REPORT_KEYS: tuple[str, ...] = (
    "csi_raw", "csi_calibrated", "reliability_raw", "reliability_calibrated",
    "brier_raw", "brier_calibrated", "cross_entropy_raw", "cross_entropy_calibrated",
    "crps_raw", "crps_calibrated",
)  # fmt: skip
#: What the temperature of each lead minimises, by the network's training loss.
CRITERIA = ("cross_entropy", "crps")

_FIELDS = ("lead_times", "thresholds", "temperature", "probability_threshold", "report")


@dataclass
class Calibration:
    """Fitted calibration, plain Python only (fits in a ``weights_only`` checkpoint).

    Attributes:
        lead_times: L lead times in minutes.
        thresholds: N rain-rate thresholds in mm/h.
        temperature: L temperatures; the calibrated logits are ``logits / T``.
        probability_threshold: [L][N] cuts p*: the event ``rate > t`` is forecast where
            ``P(R > t) >= p*`` (of the temperature-scaled distribution).
        report: scores on the fitting data, each [L][N] (see :data:`REPORT_KEYS`; the
            cross-entropy does not depend on the threshold and is repeated across it).
    """

    lead_times: list[int]
    thresholds: list[float]
    temperature: list[float]
    probability_threshold: list[list[float]]
    report: dict[str, list[list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lead_times = [int(m) for m in self.lead_times]
        self.thresholds = [float(t) for t in self.thresholds]
        self.temperature = [float(t) for t in self.temperature]
        self.probability_threshold = _grid(self.probability_threshold, self.lead_times,
                                           self.thresholds, "probability_threshold")
        self.report = {str(k): _grid(v, self.lead_times, self.thresholds, f"report[{k!r}]")
                       for k, v in self.report.items()}
        if len(set(self.lead_times)) != len(self.lead_times):
            raise ValueError(f"lead_times must be unique, got {self.lead_times}")
        if len(self.temperature) != len(self.lead_times):
            raise ValueError(f"temperature needs one value per lead ({len(self.lead_times)}), "
                             f"got {len(self.temperature)}")
        if not all(t > 0 and math.isfinite(t) for t in self.temperature):
            raise ValueError(f"temperatures must be finite and positive, got {self.temperature}")
        if not all(0.0 <= p <= 1.0 for row in self.probability_threshold for p in row):
            raise ValueError("probability thresholds must lie in [0, 1]")

    @classmethod
    def identity(cls, lead_times: Sequence[int], thresholds: Sequence[float]) -> Calibration:
        """The calibration that changes nothing: T = 1 and p* = 0.5 everywhere."""
        return cls(list(lead_times), list(thresholds), [1.0] * len(lead_times),
                   [[0.5] * len(thresholds) for _ in lead_times])

    def to_dict(self) -> dict[str, Any]:
        """The fields as dict/list/float/int/str only."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on missing, unknown or
        mis-sized fields."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"a calibration dict needs exactly the keys {list(_FIELDS)}, "
                             f"got {keys}")
        if not isinstance(d["report"], dict):
            raise ValueError("the calibration's report must be a dict")
        try:
            return cls(**d)
        except TypeError as err:
            raise ValueError(f"a calibration field has the wrong type: {err}") from None

    def _lead_index(self, lead_minutes: int) -> int:
        try:
            return self.lead_times.index(int(lead_minutes))
        except ValueError:
            raise ValueError(f"no calibration for lead time {lead_minutes} min "
                             f"(calibrated: {self.lead_times})") from None

    def scale_logits(self, logits: Tensor, lead_times: Tensor | Sequence[int],
                     dim: int = 2) -> Tensor:
        """Logits divided by the temperature of their lead.

        Args:
            logits: bin logits with the K classes along ``dim``, e.g. ``(B, L, K, H, W)``.
            lead_times: lead times in minutes, ``(B, L)`` or ``(L,)``, a tensor or
                (nested) sequence; its last axis is the logits' axis ``dim - 1``.
            dim: class dimension of ``logits``.

        Returns:
            Tensor of the logits' shape, dtype and device. Raises ``ValueError`` naming
            the lead if a lead time was not calibrated.
        """
        leads = torch.as_tensor(lead_times).cpu()
        dim = dim % logits.ndim
        if leads.ndim < 1 or leads.ndim > dim:
            raise ValueError(f"lead_times must have 1 to {dim} axes, got shape "
                             f"{tuple(leads.shape)}")
        temps = [self.temperature[self._lead_index(m)] for m in leads.flatten().tolist()]
        shape = (1,) * (dim - leads.ndim) + tuple(leads.shape) + (1,) * (logits.ndim - dim)
        t = torch.tensor(temps, dtype=logits.dtype, device=logits.device).reshape(shape)
        return logits / t

    def decision_threshold(self, lead_minutes: int, threshold: float) -> float:
        """The cut p* on P(R > ``threshold``) at a lead (minutes) and threshold (mm/h)."""
        lead = self._lead_index(lead_minutes)
        for i, t in enumerate(self.thresholds):
            if math.isclose(t, float(threshold), rel_tol=1e-9, abs_tol=1e-12):
                return self.probability_threshold[lead][i]
        raise ValueError(f"no calibration for threshold {threshold} mm/h "
                         f"(calibrated: {self.thresholds})")

    def table(self) -> pd.DataFrame:
        """One row per (lead_time_min, threshold): temperature, probability_threshold and
        the report's scores."""
        rows = []
        for i, lead in enumerate(self.lead_times):
            for j, thr in enumerate(self.thresholds):
                row = {"lead_time_min": lead, "threshold": thr,
                       "temperature": self.temperature[i],
                       "probability_threshold": self.probability_threshold[i][j]}
                row.update({k: v[i][j] for k, v in self.report.items()})
                rows.append(row)
        return pd.DataFrame(rows)


def _grid(values: Sequence[Sequence[float]], leads: list[int], thresholds: list[float],
          name: str) -> list[list[float]]:
    """``values`` as a [lead][threshold] list of floats, or ``ValueError`` if mis-sized."""
    rows = [list(r) for r in values]
    if len(rows) != len(leads) or any(len(r) != len(thresholds) for r in rows):
        raise ValueError(f"{name} must be [lead][threshold] of shape "
                         f"({len(leads)}, {len(thresholds)})")
    return [[float(v) for v in r] for r in rows]


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

    def compute(self) -> Calibration:
        """The temperature with the lowest mean criterion per lead, then at that
        temperature the CSI-maximising cut per (lead, threshold), with the report of the
        raw (T = 1, p = 0.5) and calibrated scores. A lead without data keeps T = 1; a
        (lead, threshold) without observed events keeps p* = 0.5."""
        lead_range = torch.arange(len(self.lead_values), device=self.count.device)
        raw = torch.full_like(lead_range, self.temperature_values.index(1.0))
        mean_ce, mean_crps = self.ce_sum / self.count, self.crps_sum / self.count  # (M, L)
        criterion = mean_ce if self.criterion == "cross_entropy" else mean_crps
        chosen = torch.where(self.count > 0, criterion.nan_to_num(math.inf).argmin(0), raw)
        half = self.probability_bins // 2
        cut = self._best_cut(chosen, lead_range, default=half)  # (L, N)
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


def fit_calibration(
    net: nn.Module,
    batches: Iterable[dict],
    lead_times: Sequence[int],
    thresholds: Sequence[float] = (0.1, 1.0, 4.0, 8.0),
    progress: bool = False,
    criterion: str = "cross_entropy",
) -> Calibration:
    """Fit a :class:`Calibration` of ``net`` in one pass over VALIDATION batches.

    Args:
        net: a MetNet (its ``bin_edges`` in mm/h), run without gradients on its device.
        batches: datamodule batches (``context``, ``lead_times`` (B, L), ``target``
            (B, L, Ht, Wt) mm/h and, for a net that takes them, ``lead_inputs``).
        lead_times: the lead times (minutes) to calibrate.
        thresholds: rain-rate thresholds (mm/h) of the probability cuts.
        progress: progress bar over batches.
        criterion: what each lead's temperature minimises: the network's training loss.
    """
    device = next(net.parameters()).device
    stats = CalibrationStatistics(net.bin_edges, lead_times, thresholds,
                                  criterion=criterion).to(device)
    seen = False
    with torch.no_grad():
        for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
            moved = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
            logits = net(moved["context"], moved["lead_times"], moved.get("lead_inputs"))
            stats.update(logits, moved["target"], moved["lead_times"])
            seen = True
    if not seen:
        raise ValueError("no validation batch to calibrate on")
    return stats.compute()
