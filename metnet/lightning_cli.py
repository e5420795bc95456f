"""``metnet fit|validate|test|predict``: LightningCLI over NowcastModule and NowcastDataModule.

Every model, data and trainer setting comes from ``--config`` YAML files and
can be overridden on the command line (``--model.*``, ``--data.*``,
``--trainer.*``). The network's input shape follows the data settings
(context frames, patch sizes, channel count), so they are given once.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from metnet.atomic import atomic_write
from metnet.calibration import fit_calibration
from metnet.checkpoint import Checkpoint
from metnet.data.datamodule import NowcastDataModule
from metnet.training import NowcastModule


class MetNetCLI(LightningCLI):
    """LightningCLI with metnet's argument links, callbacks and loggers.

    Logs and checkpoints go under ``--trainer.default_root_dir`` (default ``outputs``):
    ``csv/`` (and ``tensorboard/`` when installed) and ``checkpoints/`` (``best.ckpt`` by
    validation loss, ``last.ckpt`` every ``--checkpoint_every_n_steps``, default 25). The
    checkpoint folder is fixed so that ``--ckpt_path last`` finds the previous run's. When a
    fit ends, ``best.ckpt`` gets its post-hoc calibration fitted on the validation split
    (:class:`CalibrateBest`; ``metnet calibrate`` does the same for any checkpoint).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.context_frames", "model.net.init_args.context_frames")
        parser.link_arguments("data.context_size", "model.net.init_args.input_size")
        parser.link_arguments("data.target_size", "model.net.init_args.target_size")
        parser.link_arguments(
            "data.num_channels", "model.net.init_args.input_channels", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.num_lead_channels", "model.net.init_args.lead_channels", apply_on="instantiate"
        )
        parser.set_defaults({"trainer.default_root_dir": OUTPUTS})
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=25,
                            help="refresh last.ckpt every N training steps (resume point)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root, every = config.trainer.default_root_dir, config.checkpoint_every_n_steps
        progress = config.trainer.get("enable_progress_bar") is not False
        self.trainer_defaults["callbacks"] = default_callbacks(root, every, progress)
        if config.trainer.logger in (None, True):
            config.trainer.logger = default_loggers(root)
        if config.get("weights_only", False) is None:
            config.weights_only = True  # --ckpt_path files load without running their code


OUTPUTS = "outputs"


class LastCheckpoint(Callback):
    """Keeps ``last.ckpt`` current: every ``every_n_steps`` training steps and at each
    epoch's end, written to a temporary file and renamed, so a kill mid-write leaves the
    previous one intact."""

    def __init__(self, path: str, every_n_steps: int) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        with atomic_write(self.path) as tmp:  # every rank takes part; rank 0 writes
            trainer.save_checkpoint(tmp, weights_only=False)


class CalibrateBest(Callback):
    """When a fit ends, fit the best checkpoint's calibration on the validation split
    (:func:`metnet.calibration.fit_calibration`) and store it in that checkpoint.

    Every rank scores its share of the validation split; the statistics are summed across
    ranks and rank 0 writes the checkpoint.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        best = Path(trainer.checkpoint_callback.best_model_path or "")
        if trainer.interrupted or not best.is_file():
            return
        checkpoint = Checkpoint.load(best)
        datamodule = trainer.datamodule
        calibration = fit_calibration(checkpoint.net.to(pl_module.device),
                                      datamodule.dataloader("val"), datamodule.spec.lead_times,
                                      checkpoint.thresholds)
        if trainer.is_global_zero:
            checkpoint.save_calibration(calibration)
        trainer.strategy.barrier()


def default_callbacks(root: str, every_n_steps: int, progress_bar: bool = True) -> list:
    """Best and last checkpoints in ``root/checkpoints``, learning-rate log, rich progress
    (unless ``--trainer.enable_progress_bar false``)."""
    return [
        ModelCheckpoint(dirpath=f"{root}/checkpoints", monitor="val/loss", filename="best"),
        LastCheckpoint(f"{root}/checkpoints/last.ckpt", every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        CalibrateBest(),
    ] + ([RichProgressBar()] if progress_bar else [])


def default_loggers(root: str) -> list[Namespace]:
    """CSV logs always; TensorBoard as well when it is installed."""
    loggers = {"csv": CSVLogger}
    if importlib.util.find_spec("tensorboard") is not None:
        loggers["tensorboard"] = TensorBoardLogger
    return [
        Namespace(class_path=f"{cls.__module__}.{cls.__name__}",
                  init_args=Namespace(save_dir=root, name=name))
        for name, cls in loggers.items()
    ]


def run_lightning(argv: Sequence[str]) -> int:
    """Run one LightningCLI sub-command; returns the exit status."""
    MetNetCLI(
        NowcastModule,
        NowcastDataModule,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
    )
    return 0


class CalibrationCLI(MetNetCLI):
    """The training configuration (as ``metnet fit`` takes it) plus the checkpoint to
    calibrate, ``--ckpt_path``: what ``metnet calibrate`` parses."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str, required=True,
                            help="checkpoint of `metnet fit` to calibrate (rewritten in place)")


def calibration_cli(argv: Sequence[str]) -> CalibrationCLI:
    """What ``metnet calibrate ARGV`` configures (``--config`` files, ``--data.*``
    overrides, ``--ckpt_path``), without training anything."""
    with warnings.catch_warnings():  # "args given while sys.argv has arguments": intended
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        return CalibrationCLI(NowcastModule, NowcastDataModule, args=list(argv), run=False)
