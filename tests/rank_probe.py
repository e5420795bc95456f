"""Callbacks that the distributed-training tests give to ``metnet fit`` on the command line
(``--trainer.callbacks``; the tests put this folder on ``PYTHONPATH`` so that every rank
imports them): one records what each rank trains on, one makes a rank die."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

#: The exit status of a rank that :class:`DieAtStep` ends.
DIED = 3


class SampleLog(Callback):
    """Appends, for every training batch, one JSON line to ``FOLDER/rank<R>.jsonl``: the
    epoch, the global step before the batch, and its samples as ``[store, init_time (ns),
    row, col]``, which name a training sample (with one patch per window)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        samples = [[store, int(time), int(row), int(col)] for store, time, row, col
                   in zip(batch["store"], batch["init_time"], batch["row"], batch["col"],
                          strict=True)]
        line = {"epoch": trainer.current_epoch, "step": trainer.global_step, "samples": samples}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as log:
            log.write(json.dumps(line) + "\n")


class DieAtStep(Callback):
    """Ends rank ``rank``'s process at once (``os._exit``, as a crash or an out-of-memory
    kill would: no clean-up, no checkpoint) when it is about to train the batch after
    ``step`` optimiser steps."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os._exit(DIED)
