"""``metnet fit|validate|test|predict``: LightningCLI over NowcastModule and NowcastDataModule.

Every model, data and trainer setting comes from ``--config`` YAML files and
can be overridden on the command line (``--model.*``, ``--data.*``,
``--trainer.*``). The network's input shape follows the data settings
(context frames, patch sizes, channel count), so they are given once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from metnet.data.datamodule import NowcastDataModule
from metnet.training import NowcastModule


class MetNetCLI(LightningCLI):
    """LightningCLI with metnet's argument links, callbacks and loggers.

    Logs and checkpoints go under ``--trainer.default_root_dir`` (default ``outputs``):
    ``csv/`` (and ``tensorboard/`` when installed) and ``checkpoints/`` (``best.ckpt`` by
    validation loss, ``last.ckpt`` refreshed every 25 steps and at each epoch's end). The
    checkpoint folder is fixed so that ``--ckpt_path last`` finds the previous run's.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.context_frames", "model.net.init_args.context_frames")
        parser.link_arguments("data.context_size", "model.net.init_args.input_size")
        parser.link_arguments("data.target_size", "model.net.init_args.target_size")
        parser.link_arguments(
            "data.num_channels", "model.net.init_args.input_channels", apply_on="instantiate"
        )
        parser.set_defaults({"trainer.default_root_dir": OUTPUTS})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        self.trainer_defaults["callbacks"] = default_callbacks(root)
        if config.trainer.logger in (None, True):
            config.trainer.logger = default_loggers(root)


OUTPUTS = "outputs"
CHECKPOINT_EVERY_N_STEPS = 25


def default_callbacks(root: str) -> list:
    """Best and last checkpoints in ``root/checkpoints``, learning-rate log, rich progress."""
    return [
        ModelCheckpoint(dirpath=f"{root}/checkpoints", monitor="val/loss", filename="best"),
        ModelCheckpoint(dirpath=f"{root}/checkpoints", every_n_train_steps=CHECKPOINT_EVERY_N_STEPS,
                        save_top_k=0, save_last=True),
        LearningRateMonitor(logging_interval="step"),
        RichProgressBar(),
    ]


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
