"""``metnet fit|validate|test``: LightningCLI over NowcastModule and NowcastDataModule.

Every model, data and trainer setting comes from ``--config`` YAML files and
can be overridden on the command line (``--model.*``, ``--data.*``,
``--trainer.*``). The network's input shape follows the data settings
(context frames, patch sizes, channel count), so they are given once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
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
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from metnet.atomic import atomic_write
from metnet.calibration import fit_calibration
from metnet.checkpoint import Checkpoint
from metnet.data.datamodule import NowcastDataModule
from metnet.training import NowcastModule


class SaveConfigWithoutSecrets(SaveConfigCallback):
    """Lightning's ``config.yaml`` of a run, less ``data.storage_options``: fsspec options may
    hold credentials (an S3 key and secret, a token), which a log folder must not keep.
    A run from that file takes them again on the command line or from the environment."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.config.get("data") is not None and "storage_options" in self.config.data:
            self.config = self.config.clone()
            self.config.data.storage_options = None
        super().setup(trainer, pl_module, stage)


class MetNetCLI(LightningCLI):
    """LightningCLI with metnet's argument links, callbacks and loggers.

    Logs and checkpoints go under ``--trainer.default_root_dir`` (default ``outputs``):
    ``csv/`` (and ``tensorboard/`` when installed), and each fit's checkpoints in a folder
    of its own, ``runs/version_N/`` (``best.ckpt`` by validation loss, ``last.ckpt`` every
    ``--checkpoint_every_n_steps``, default 25), which ``checkpoints`` points to: so
    ``checkpoints/best.ckpt`` is always the latest run's, earlier runs are kept, and
    ``--ckpt_path last`` resumes the latest run (:func:`run_folder`). When a fit ends,
    ``best.ckpt`` gets its post-hoc calibration fitted on the validation split
    (:class:`CalibrateBest`; ``metnet calibrate`` does the same for any checkpoint).

    Before the trainer starts, the data are set up and a ``--ckpt_path`` file is read
    safely, so a missing store or a damaged checkpoint fails in one line, with no log
    folder left behind.
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
        root, every = Path(config.trainer.default_root_dir), config.checkpoint_every_n_steps
        progress = config.trainer.get("enable_progress_bar") is not False
        ckpt_path = config.get("ckpt_path")
        folder = root / CHECKPOINTS
        if self.subcommand in (None, "fit"):
            folder = self.run_folder = plan_run_folder(root, resume=ckpt_path == "last")
            if self.subcommand is None:  # built for use from Python: ready now
                open_run_folder(self.run_folder)
        self.trainer_defaults["callbacks"] = default_callbacks(folder, every, progress)
        if config.trainer.logger in (None, True):
            config.trainer.logger = default_loggers(str(root))
        if config.get("weights_only", False) is None:
            config.weights_only = True  # --ckpt_path files load without running their code

    def _parse_ckpt_path(self) -> None:
        """Read a ``--ckpt_path`` file safely before LightningCLI takes its hyperparameters,
        so a damaged or foreign file fails in one line."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            Checkpoint.load(ckpt_path)
        super()._parse_ckpt_path()

    def _check_run(self) -> None:
        """Set the data up and read a ``--ckpt_path`` file before the trainer starts."""
        self.datamodule.setup(self.subcommand)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc", "registry"):
            Checkpoint.load(ckpt_path)

    def before_fit(self) -> None:
        self._check_run()
        open_run_folder(self.run_folder)

    before_validate = before_test = _check_run

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's, without ``predict``: ``metnet forecast`` is the one way to
        forecast."""
        return {name: keys for name, keys in LightningCLI.subcommands().items()
                if name != "predict"}


OUTPUTS = "outputs"
CHECKPOINTS = "checkpoints"
RUNS = "runs"


def plan_run_folder(root: Path, resume: bool) -> Path:
    """The checkpoint folder a fit under ``root`` will write (:func:`open_run_folder` makes
    it and points ``root/checkpoints`` to it).

    A new run gets ``root/runs/version_N`` (the next free N; ``slurm_JOBID`` in a SLURM
    job, whose ranks all start at once); resuming (``--ckpt_path last``) continues the
    latest run's, and the processes Lightning launches for the other ranks of a run use the
    folder their first process made. A ``checkpoints`` folder of an earlier metnet (not a
    link) is moved to a run folder of its own first, so nothing is overwritten.

    Raises:
        ValueError: resuming with no ``last.ckpt`` to resume from.
    """
    link = root / CHECKPOINTS
    if resume:
        if not (link / "last.ckpt").is_file():
            raise ValueError(f"--ckpt_path last: there is no {link / 'last.ckpt'} to resume "
                             "from; start a new run without --ckpt_path")
        return link.resolve()
    if int(os.environ.get("LOCAL_RANK", 0)) > 0:  # launched by this run's rank 0
        return link.resolve()
    runs = root / RUNS
    if link.is_dir() and not link.is_symlink():
        runs.mkdir(parents=True, exist_ok=True)
        link.rename(_next_version(runs))
    job = os.environ.get("SLURM_JOB_ID")
    return runs / f"slurm_{job}" if job else _next_version(runs)


def open_run_folder(folder: Path) -> None:
    """Make a run's checkpoint folder (``ROOT/runs/NAME``) and point ``ROOT/checkpoints``
    to it (a relative link, replaced in one rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.parents[1]
    link = root / CHECKPOINTS
    if link.is_symlink() and link.resolve() == folder.resolve():
        return
    pointer = root / f".{CHECKPOINTS}.{os.getpid()}.tmp"
    pointer.unlink(missing_ok=True)
    pointer.symlink_to(folder.relative_to(root), target_is_directory=True)
    os.replace(pointer, link)


def _next_version(runs: Path) -> Path:
    taken = [int(p.name.split("_")[1]) for p in runs.glob("version_*")
             if p.name.split("_")[1].isdigit()]
    return runs / f"version_{max(taken, default=-1) + 1}"


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
    (:func:`metnet.calibration.fit_calibration`, pooled and per store) and store it in that
    checkpoint.

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
                                      checkpoint.thresholds, criterion=checkpoint.loss,
                                      stores=datamodule.store_names)
        if trainer.is_global_zero:
            checkpoint.save_calibration(calibration)
        trainer.strategy.barrier()


def default_callbacks(folder: Path, every_n_steps: int, progress_bar: bool = True) -> list:
    """Best and last checkpoints in ``folder``, learning-rate log, and progress (unless
    ``--trainer.enable_progress_bar false``): a rich bar in a terminal, a plain line every
    so many steps otherwise (a log file, a cluster job)."""
    progress = RichProgressBar() if sys.stdout.isatty() else LineProgress()
    return [
        ModelCheckpoint(dirpath=str(folder), monitor="val/loss", filename="best"),
        LastCheckpoint(str(folder / "last.ckpt"), every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        CalibrateBest(),
    ] + ([progress] if progress_bar else [])


class LineProgress(ProgressBar):
    """Progress as plain lines on standard output, for logs that are not a terminal: one
    every ``every`` training steps and one at the end of each epoch and validation."""

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        self.every = every
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, trainer: Trainer, what: str) -> None:
        if self._enabled and trainer.is_global_zero:
            metrics = self.get_metrics(trainer, trainer.lightning_module)
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items() if k != "v_num")
            print(f"epoch {trainer.current_epoch} step {trainer.global_step} {what} {shown}",
                  flush=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._line(trainer, "train")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._line(trainer, "end of epoch")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._line(trainer, "validated")


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
    with warnings.catch_warnings():  # "args given while sys.argv has arguments": intended
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        MetNetCLI(
            NowcastModule,
            NowcastDataModule,
            args=list(argv),
            save_config_callback=SaveConfigWithoutSecrets,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # a usage error is one line (metnet.cli)
        )
    return 0


class CalibrationCLI(MetNetCLI):
    """The training configuration (as ``metnet fit`` takes it) plus the checkpoint to
    calibrate, ``--ckpt_path``: what ``metnet calibrate`` parses. Only the datamodule is
    built: the network is the checkpoint's, and nothing is trained."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str, required=True,
                            help="checkpoint of `metnet fit` to calibrate (rewritten in place)")
        parser.add_argument("--device", type=str, default="auto",
                            help="where the network runs: auto (a CUDA GPU if there is one, "
                            "else the CPU), cpu, cuda, cuda:N, mps")

    def before_instantiate_classes(self) -> None:
        """No trainer callbacks or loggers: nothing is trained."""

    def instantiate_classes(self) -> None:
        settings = self.config.data.as_dict()
        self.datamodule = NowcastDataModule(**{k: v for k, v in settings.items()
                                               if not k.startswith("__")})  # "__path__"


def calibration_cli(argv: Sequence[str]) -> CalibrationCLI:
    """What ``metnet calibrate ARGV`` configures (``--config`` files, ``--data.*``
    overrides, ``--ckpt_path``), without training anything."""
    with warnings.catch_warnings():  # "args given while sys.argv has arguments": intended
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        return CalibrationCLI(NowcastModule, NowcastDataModule, args=list(argv), run=False)
