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

Fitting: :func:`fit_calibration` feeds batches to
:class:`metnet.metrics.CalibrationStatistics` (a torchmetrics metric, kept with the others so
that reading a calibration does not import torchmetrics), which accumulates in one pass the
cross-entropy for every candidate temperature and histograms of the exceedance
probabilities with their observed outcomes, and turns them into a :class:`Calibration`. Its
states are sums reduced across DDP ranks. Feed it only VALIDATION batches: fitted on
training data it calibrates the training fit, and fitted on test data it makes the test
scores optimistic.

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
from tqdm.auto import tqdm

#: Candidate temperatures; 1.0 (the uncalibrated network) must be among them.
DEFAULT_TEMPERATURES: tuple[float, ...] = (
    0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5,
)  # fmt: skip

#: Keys of :attr:`Calibration.report` written by
#: :meth:`metnet.metrics.CalibrationStatistics.compute`;
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
    from metnet.metrics import CalibrationStatistics  # torchmetrics: seconds to import

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
