"""Verification scores accumulated over batches, per lead time, reduced across DDP ranks.

States are sums (counts, sums of scores), registered with torchmetrics'
``dist_reduce_fx="sum"``, so a score computed on several ranks equals the
score computed on all their data at once. The categorical scores follow
pysteps' definitions (``pysteps.verification.det_cat_fct``), against which
they are tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


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
