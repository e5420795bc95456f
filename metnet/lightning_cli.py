"""``metnet fit|validate|test|predict``: LightningCLI over NowcastModule and NowcastDataModule.

Every model, data and trainer setting comes from ``--config`` YAML files and
can be overridden on the command line (``--model.*``, ``--data.*``,
``--trainer.*``). The network's input shape follows the data settings
(context frames, patch sizes, channel count), so they are given once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from metnet.data.datamodule import NowcastDataModule
from metnet.training import NowcastModule


class MetNetCLI(LightningCLI):
    """LightningCLI with metnet's argument links and default callbacks and loggers."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.context_frames", "model.net.init_args.context_frames")
        parser.link_arguments("data.context_size", "model.net.init_args.input_size")
        parser.link_arguments("data.target_size", "model.net.init_args.target_size")
        parser.link_arguments(
            "data.num_channels", "model.net.init_args.input_channels", apply_on="instantiate"
        )


OUTPUTS = "outputs"


def trainer_defaults(save_dir: str = OUTPUTS) -> dict:
    """Callbacks and loggers every run gets (configs and ``--trainer.*`` add to them).

    Checkpoints go to a fixed folder so that ``--ckpt_path last`` finds the previous run's;
    a mid-epoch checkpoint every 25 steps lets a killed run resume close to where it stopped.
    CSV logs always, TensorBoard as well when it is installed.
    """
    loggers = [_logger(CSVLogger, save_dir, "csv")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(_logger(TensorBoardLogger, save_dir, "tensorboard"))
    return {
        "logger": loggers,
        "callbacks": [
            ModelCheckpoint(dirpath=f"{save_dir}/checkpoints", monitor="val/loss",
                            filename="best"),
            ModelCheckpoint(dirpath=f"{save_dir}/checkpoints", every_n_train_steps=25,
                            save_top_k=0, save_last=True),
            LearningRateMonitor(logging_interval="step"),
            RichProgressBar(),
        ],
    }


def _logger(cls: type, save_dir: str, name: str) -> dict:
    """A logger as a config entry (instances would not serialise into the saved config)."""
    path = f"{cls.__module__}.{cls.__name__}"
    return {"class_path": path, "init_args": {"save_dir": save_dir, "name": name}}


def run_lightning(argv: Sequence[str]) -> int:
    """Run one LightningCLI sub-command; returns the exit status."""
    MetNetCLI(
        NowcastModule,
        NowcastDataModule,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
    )
    return 0
