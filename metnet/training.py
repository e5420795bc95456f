"""``NowcastModule``: trains a :class:`~metnet.models.MetNet` with Lightning.

It composes the network, its loss (the masked cross-entropy over the rain-rate bins, as in
MetNet, or the exact CRPS of the distribution), AdamW with linear
warm-up and cosine decay, and the verification scores. On validation and
test it scores the model and Eulerian persistence (the last context frame)
on the same batches, per lead time and pooled over leads, and, when the
batches carry motion inputs (``lead_inputs``), Lagrangian extrapolation too
(the extrapolated field the network is given):

* ``{split}/loss``: the training loss of the model (the monitored quantity);
* ``{split}/{method}/{score}_{threshold}`` and ``.../lead_{minutes}``: CSI,
  POD, FAR at each threshold (an observed event is R > t, as in pysteps; the model's
  event is P(R > t) >= 0.5);
* on test, with a calibrated checkpoint (:mod:`metnet.calibration`), the same scores
  for ``model_calibrated``: the temperature-scaled distribution, and events where
  P(R > t) reaches the calibrated cut of the lead and threshold (each sample's store's
  calibration where the checkpoint holds one per store);
* ``{split}/{method}/crps`` and ``brier_{threshold}``: CRPS in mm/h (a point
  forecast's CRPS is its absolute error) and the Brier score;
* ``{split}/model/ce`` per lead.

It holds no layer code; the network is an ``nn.Module`` given to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from metnet.calibration import Calibration
from metnet.checkpoint import CALIBRATION_KEY, Checkpoint, record
from metnet.distribution import (
    RainRateDistribution,
    masked_cross_entropy,
    masked_crps,
    pixel_cross_entropy,
)
from metnet.metrics import ContingencyScores, LeadMean
from metnet.models import MetNet
from metnet.nowcasts import get_method
from metnet.transforms import input_to_rate

METHODS = ("model", "model_calibrated", "persistence", "extrapolation")
#: The training losses, by name: mean over the observed target pixels.
LOSSES = {"cross_entropy": masked_cross_entropy, "crps": masked_crps}


class NowcastModule(L.LightningModule):
    """Lightning wrapper of a MetNet network.

    Args:
        net: the network (in YAML: ``class_path: metnet.models.MetNet`` and ``init_args``).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then cosine decay to 0 at the last step.
        thresholds: rain-rate thresholds (mm/h) of the categorical scores.
        brier_threshold: threshold (mm/h) of the Brier score.
        rain_channel: index of the transformed rain channel in the context (persistence).
        mask_channel: index of the coverage-mask channel in the context.
        loss: ``cross_entropy`` (the log score of the observed bin, MetNet's) or ``crps``
            (the distribution's exact CRPS in mm/h; both are proper scores, and CRPS does
            not reward spreading probability over unlikely bins the way the log score
            punishes missing them).
    """

    def __init__(
        self,
        net: MetNet,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        thresholds: tuple[float, ...] = (0.1, 1.0, 4.0, 8.0),
        brier_threshold: float = 1.0,
        rain_channel: int = 0,
        mask_channel: int = 1,
        loss: Literal["cross_entropy", "crps"] = "cross_entropy",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.register_buffer("bin_edges", torch.tensor(net.bin_edges, dtype=torch.float32),
                             persistent=False)
        self.scores = torch.nn.ModuleDict()
        self._total_steps: int | None = None
        self._lead_times: list[int] = []  # lead times (minutes) of the scores' rows
        self.calibration: Calibration | None = None  # from a calibrated checkpoint

    # -- steps -------------------------------------------------------------------------

    def forward(self, context: Tensor, lead_times: Tensor,
                lead_inputs: Tensor | None = None) -> Tensor:
        """Logits (B, L, K, Ht, Wt) for a context (B, T, C, H, W), leads (B, L) minutes and,
        for a network that takes them, per-lead inputs (B, L, Cl, H, W)."""
        return self.net(context, lead_times, lead_inputs)

    def logits(self, batch: dict[str, Any]) -> Tensor:
        """The network's logits (B, L, K, Ht, Wt) for a batch of the datamodule."""
        return self(batch["context"], batch["lead_times"], batch.get("lead_inputs"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self.logits(batch)
        loss = LOSSES[self.hparams.loss](logits, batch["target"], self.bin_edges, dim=2)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # -- evaluation --------------------------------------------------------------------

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        target = batch["target"]
        logits = self.logits(batch).float()
        valid = ~torch.isnan(target)
        ce = pixel_cross_entropy(logits, target, self.bin_edges, dim=2)
        loss = LOSSES[self.hparams.loss](logits, target, self.bin_edges, dim=2)
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(target))
        scores = self._split_scores(split, target.shape[1])
        scores["model_ce"].update(ce, valid)
        for method, (method_logits, cuts) in self._model_forecasts(logits, batch, split).items():
            dist = RainRateDistribution(method_logits, self.bin_edges, dim=2)
            exceed = torch.stack([dist.exceedance(t) for t in self.hparams.thresholds], dim=2)
            events = exceed >= cuts.to(exceed)[:, :, :, None, None]
            self._update(scores, method, events, dist.crps(target.nan_to_num(0.0)),
                         dist.exceedance(self.hparams.brier_threshold), target)
        for method, field in self.baselines(batch).items():
            events = torch.stack([field > t for t in self.hparams.thresholds], dim=2)
            self._update(scores, method, events, (field - target.nan_to_num(0.0)).abs(),
                         (field > self.hparams.brier_threshold).float(), target)
        self._lead_times = batch["lead_times"][0].tolist()

    def _model_forecasts(self, logits: Tensor, batch: dict[str, Any],
                         split: str) -> dict[str, tuple[Tensor, Tensor]]:
        """The model's scored forecasts: {method: (logits, (B, L, N) probability cuts)}: the
        raw logits with 0.5, and on test with a calibrated checkpoint its tempered logits and
        calibrated cuts (``model_calibrated``), each sample's by its store's calibration
        (:meth:`metnet.calibration.Calibration.for_store`)."""
        thresholds = self.hparams.thresholds
        batch_size, num_leads = logits.shape[:2]
        out = {"model": (logits, torch.full((batch_size, num_leads, len(thresholds)), 0.5))}
        if split == "test" and self.calibration is not None:
            stores = batch.get("store", [None] * batch_size)
            scaled, cuts = [], []
            for i, store in enumerate(stores):
                calibration = self.calibration.for_store(store)
                leads = batch["lead_times"][i]
                scaled.append(calibration.scale_logits(logits[i:i + 1], leads, dim=2))
                cuts.append([[calibration.decision_threshold(m, t) for t in thresholds]
                             for m in leads.tolist()])
            out["model_calibrated"] = (torch.cat(scaled), torch.tensor(cuts))
        return out

    def _update(self, scores: torch.nn.ModuleDict, method: str, events: Tensor, crps: Tensor,
                probability: Tensor, target: Tensor) -> None:
        """Add one method's batch: events (B, L, N, Ht, Wt), CRPS (B, L, Ht, Wt) mm/h and
        P(R > brier threshold) (B, L, Ht, Wt) against the target (NaN: not observed)."""
        valid = ~torch.isnan(target)
        observed = (target.nan_to_num(0.0) > self.hparams.brier_threshold).float()
        scores[f"{method}_contingency"].update(events, target)
        scores[f"{method}_crps"].update(crps, valid)
        scores[f"{method}_brier"].update((probability - observed) ** 2, valid)

    def baselines(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Baseline forecasts (B, L, Ht, Wt) mm/h of a batch: persistence, and extrapolation
        when the batch has motion inputs; NaN where the baseline knows nothing."""
        target = batch["target"]
        out = {"persistence": self.persistence(batch["context"], target)}
        if "lead_inputs" in batch:
            out["extrapolation"] = self.extrapolation(batch["lead_inputs"], target)
        return out

    def extrapolation(self, lead_inputs: Tensor, target: Tensor) -> Tensor:
        """The extrapolated field (B, L, Ht, Wt) mm/h in per-lead inputs (B, L, Cl, H, W)
        (channel 0: rain, channel 1: validity; :mod:`metnet.data.motion`)."""
        planes = _central(lead_inputs, target.shape[-2:]).float()
        return torch.where(planes[:, :, 1] > 0.5, input_to_rate(planes[:, :, 0]), torch.nan)

    def persistence(self, context: Tensor, target: Tensor) -> Tensor:
        """Eulerian persistence (B, L, Ht, Wt) mm/h of the context's central patch (the
        ``persistence`` nowcast method of :mod:`metnet.nowcasts`)."""
        frames = _central(context, target.shape[-2:]).float()  # (B, T, C, Ht, Wt)
        rate = input_to_rate(frames[:, :, self.hparams.rain_channel])
        rate = torch.where(frames[:, :, self.hparams.mask_channel] > 0.5, rate, torch.nan)
        leads = range(target.shape[1])
        return torch.stack([get_method("persistence")(r, leads) for r in rate])

    def _split_scores(self, split: str, num_leads: int) -> torch.nn.ModuleDict:
        if split not in self.scores:
            thresholds = self.hparams.thresholds
            metrics = {f"{m}_contingency": ContingencyScores(num_leads, thresholds)
                       for m in METHODS}
            metrics |= {f"{m}_{s}": LeadMean(num_leads) for m in METHODS for s in ("crps", "brier")}
            metrics["model_ce"] = LeadMean(num_leads)
            self.scores[split] = torch.nn.ModuleDict(metrics).to(self.device)
        return self.scores[split]

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, split: str) -> None:
        if split not in self.scores:
            return
        values = self.summarise(split)
        self.log_dict(values, sync_dist=False)  # states are already reduced across ranks
        for metric in self.scores[split].values():
            metric.reset()

    def summarise(self, split: str) -> dict[str, float]:
        """Every score of ``split`` as a flat ``{name: value}`` dict (see module docstring)."""
        scores, leads = self.scores[split], self._lead_times
        out: dict[str, float] = {}
        for method in METHODS:
            if not scores[f"{method}_contingency"].update_called:
                continue  # e.g. extrapolation without motion inputs
            table = scores[f"{method}_contingency"].compute()
            for i, t in enumerate(self.hparams.thresholds):
                for name in ("csi", "pod", "far"):
                    out[f"{split}/{method}/{name}_{t:g}"] = float(table[f"{name}_all"][i])
                    for j, lead in enumerate(leads):
                        out[f"{split}/{method}/{name}_{t:g}/lead_{lead}"] = float(table[name][j, i])
            for name in ("crps", "brier"):
                label = name if name == "crps" else f"brier_{self.hparams.brier_threshold:g}"
                mean = scores[f"{method}_{name}"].compute()
                out[f"{split}/{method}/{label}"] = float(mean["all"])
                for j, lead in enumerate(leads):
                    out[f"{split}/{method}/{label}/lead_{lead}"] = float(mean["lead"][j])
        ce = scores["model_ce"].compute()
        out[f"{split}/model/ce"] = float(ce["all"])
        for j, lead in enumerate(leads):
            out[f"{split}/model/ce/lead_{lead}"] = float(ce["lead"][j])
        return out

    def on_train_start(self) -> None:
        # Asked here, not in configure_optimizers: asking there builds the train loader before
        # a resumed run has restored the loader's mid-epoch position (Lightning 2.6).
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)

    def _lr_factor(self, step: int) -> float:
        total = self._total_steps or max(step + 1, self.hparams.warmup_steps)
        return warmup_cosine(step, min(self.hparams.warmup_steps, total), total)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the format, the network's class and its constructor arguments, so
        :class:`metnet.checkpoint.Checkpoint` rebuilds it without unpickling code, and the
        pixel size of the datamodule's stores, which forecasts check."""
        record(checkpoint, self.net, getattr(self.trainer.datamodule, "pixel_size", None))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose network differs from the configured one, naming why."""
        saved = Checkpoint(checkpoint)
        saved.check_network(self.net)
        if CALIBRATION_KEY in checkpoint:
            self.calibration = saved.calibration

    # -- optimisation ------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.net.named_parameters():
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _central(planes: Tensor, size: Sequence[int]) -> Tensor:
    """The central ``size`` (Ht, Wt) square of planes (..., H, W)."""
    (ht, wt), (h, w) = size, planes.shape[-2:]
    top, left = (h - ht) // 2, (w - wt) // 2
    return planes[..., top:top + ht, left:left + wt]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
