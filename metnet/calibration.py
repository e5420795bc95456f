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

Why one per store as well: a model trained on several radars forecasts each one's rain
with its own biases. Fitted on the pooled validation split, the stores with the most rain
choose the temperatures and cuts for all: on the bundled stores, tempering that suits
KNMI's and MeteoSwiss' showers (T = 1.5 at 15 min, cut 0.53) drops the light rain of
FMI's (CSI 0.28 -> 0.16 at 15 min, BENCHMARKS.md). So a calibration fitted on several
stores also holds one per store (:attr:`Calibration.stores`), and a forecast of a store
uses that store's (:meth:`Calibration.for_store`), else the pooled one. A store's
validation windows are few, so its own temperature and cuts replace the pooled ones only
where they are clearly better on its windows (2 % of the criterion, 0.02 of CSI:
:meth:`metnet.metrics.CalibrationStatistics.compute`).

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
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
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
#: Optional in a calibration dict (absent in checkpoints calibrated before it existed).
_OPTIONAL_FIELDS = ("stores",)


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
        stores: the calibration of each store, by its short name
            (:func:`metnet.io.store.store_name`), fitted on that store's validation
            batches alone with the pooled calibration as the fallback, with the same lead
            times and thresholds; empty when fitted on one store, and without the stores
            that had no validation window. Two stores of the same short name share one.
    """

    lead_times: list[int]
    thresholds: list[float]
    temperature: list[float]
    probability_threshold: list[list[float]]
    report: dict[str, list[list[float]]] = field(default_factory=dict)
    stores: dict[str, Calibration] = field(default_factory=dict)

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
        self.stores = {str(name): _store_calibration(name, c, self)
                       for name, c in self.stores.items()}

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
        if not isinstance(d, dict) or not set(_FIELDS) <= set(d) <= {*_FIELDS,
                                                                     *_OPTIONAL_FIELDS}:
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"a calibration dict needs the keys {list(_FIELDS)} (and "
                             f"optionally {list(_OPTIONAL_FIELDS)}), got {keys}")
        if not isinstance(d["report"], dict):
            raise ValueError("the calibration's report must be a dict")
        stores = d.get("stores", {})
        if not isinstance(stores, dict):
            raise ValueError("the calibration's stores must be a dict")
        try:
            return cls(**{**d, "stores": {name: cls.from_dict(c) for name, c in stores.items()}})
        except TypeError as err:
            raise ValueError(f"a calibration field has the wrong type: {err}") from None

    def for_store(self, name: str | None) -> Calibration:
        """The calibration to forecast the store called ``name`` with (its short name,
        :func:`metnet.io.store.store_name`): its own if fitted, else this pooled one."""
        return self.stores.get(name, self) if name is not None else self

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
        """One row per (store, lead_time_min, threshold): temperature,
        probability_threshold and the report's scores; ``store`` is empty for the pooled
        calibration, whose rows come first."""
        rows = []
        for name, calibration in {"": self, **self.stores}.items():
            for i, lead in enumerate(calibration.lead_times):
                for j, thr in enumerate(calibration.thresholds):
                    row = {"store": name, "lead_time_min": lead, "threshold": thr,
                           "temperature": calibration.temperature[i],
                           "probability_threshold": calibration.probability_threshold[i][j]}
                    row.update({k: v[i][j] for k, v in calibration.report.items()})
                    rows.append(row)
        return pd.DataFrame(rows)


def _store_calibration(name: str, calibration: Calibration, pooled: Calibration) -> Calibration:
    """A store's calibration, checked to fit ``pooled``: same lead times and thresholds,
    no stores of its own."""
    if not isinstance(calibration, Calibration):
        raise ValueError(f"the calibration of store {name!r} is not a calibration")
    if (calibration.lead_times, calibration.thresholds) != (pooled.lead_times,
                                                            pooled.thresholds):
        raise ValueError(f"the calibration of store {name!r} has other lead times or "
                         "thresholds than the pooled one")
    if calibration.stores:
        raise ValueError(f"the calibration of store {name!r} has stores of its own")
    return calibration


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
    stores: Sequence[str] = (),
) -> Calibration:
    """Fit a :class:`Calibration` of ``net`` in one pass over VALIDATION batches.

    Args:
        net: a MetNet (its ``bin_edges`` in mm/h), run without gradients on its device.
        batches: datamodule batches (``context``, ``lead_times`` (B, L), ``target``
            (B, L, Ht, Wt) mm/h, ``store`` (B names) and, for a net that takes them,
            ``lead_inputs``).
        lead_times: the lead times (minutes) to calibrate.
        thresholds: rain-rate thresholds (mm/h) of the probability cuts.
        progress: progress bar over batches.
        criterion: what each lead's temperature minimises: the network's training loss.
        stores: the short names of the stores the batches come from. With two or more,
            each one with validation data also gets its own calibration
            (:attr:`Calibration.stores`): the pooled temperature and cut, except where the
            store's own are clearly better on its batches. Every rank of a distributed
            run must give the same names: their statistics are summed across ranks.
    """
    from metnet.metrics import CalibrationStatistics  # torchmetrics: seconds to import

    device = next(net.parameters()).device

    def statistics() -> CalibrationStatistics:
        return CalibrationStatistics(net.bin_edges, lead_times, thresholds,
                                     criterion=criterion).to(device)

    pooled = statistics()
    names = list(dict.fromkeys(stores))
    per_store = {name: statistics() for name in names} if len(names) > 1 else {}
    seen = False
    with torch.no_grad():
        for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
            moved = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
            logits = net(moved["context"], moved["lead_times"], moved.get("lead_inputs"))
            seen = True
            if not per_store:
                pooled.update(logits, moved["target"], moved["lead_times"])
                continue
            if "store" not in batch:
                raise ValueError("per-store calibrations need batches that name their "
                                 "stores ('store')")
            for name in dict.fromkeys(batch["store"]):  # a store's samples go to its own only
                index = torch.tensor([i for i, s in enumerate(batch["store"]) if s == name],
                                     device=device)
                per_store.get(name, pooled).update(logits[index], moved["target"][index],
                                                   moved["lead_times"][index])
    if not seen:
        raise ValueError("no validation batch to calibrate on")
    for stats in per_store.values():  # the pooled statistics are sums: add the stores' in
        pooled.merge_state(stats)
    with warnings.catch_warnings():  # statistics that no batch updated (merged, or empty)
        warnings.filterwarnings("ignore", message=".*compute.* was called before")
        pooled_fit = pooled.compute()
        own = {name: stats.compute(fallback=pooled_fit) for name, stats in per_store.items()}
    return replace(pooled_fit, stores={name: c for name, c in own.items() if _scored(c)})


def _scored(calibration: Calibration) -> bool:
    """Whether a fitted calibration saw data (its report's scores are NaN without)."""
    return any(math.isfinite(v) for row in calibration.report.get("crps_raw", []) for v in row)
