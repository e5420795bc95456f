"""Every configuration in ``configs/`` composes through ``metnet fit``'s parser: run configs
alone, network pieces with the synthetic run, data pieces with the run that names them (or
the radar run), trainer pieces as trainer settings; each builds its network and datamodule,
and those that fit a small store train on a batch of it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser

from metnet.data.datamodule import NowcastDataModule
from metnet.io.store import write_store
from metnet.io.synthetic import synthesize
from metnet.lightning_cli import MetNetCLI
from metnet.training import NowcastModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = sorted(CONFIGS.glob("*.yaml"))
PIECES = {kind: sorted((CONFIGS / kind).glob("*.yaml")) for kind in ("model", "data", "trainer")}
STORE_SIDE = 128  # px: the small store's grid; configs with a larger context only build


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 frames (10 h) of 128 x 128 px: a complete window in every split of every config
    whose context fits the grid."""
    path = tmp_path_factory.mktemp("configs") / "small.zarr"
    return write_store(synthesize(frames=120, height=STORE_SIDE, width=STORE_SIDE, seed=2), path)


def build(args: list[str], store: Path) -> MetNetCLI:
    """What ``metnet fit ARGS`` configures, with every store replaced by ``store``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        return MetNetCLI(NowcastModule, NowcastDataModule, run=False, args=[
            *args, "--data.stores", f"[{store}]",
            "--data.cache_dir", str(store.parent / "cache"),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(store.parent)])


def check_fits(cli: MetNetCLI, train: bool) -> None:
    """The network takes the datamodule's samples; with ``train``, a training step on one
    batch of the small store gives a finite loss and gradients."""
    net, dm = cli.model.net, cli.datamodule
    assert net.config["input_channels"] == dm.num_channels >= 2
    assert net.config["lead_channels"] == dm.num_lead_channels
    assert net.config["context_frames"] == dm.spec.context_frames
    assert net.config["input_size"] == dm.spec.context_size
    assert net.config["target_size"] == dm.spec.target_size
    assert max(dm.spec.lead_times) <= net.config["max_lead_minutes"]
    assert dm.stores and all(s.endswith(".zarr") for s in dm.stores)
    if not train:
        return
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = cli.model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def _plain(value):
    """Tuples as lists, as YAML gives them."""
    return list(value) if isinstance(value, tuple) else value


def fits_store(cli: MetNetCLI) -> bool:
    return cli.datamodule.spec.context_size <= STORE_SIDE


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=[r.stem for r in RUNS])
def test_run_config_builds_and_trains(run: Path, store: Path) -> None:
    cli = build(["--config", str(run)], store)
    check_fits(cli, train=fits_store(cli))


@pytest.mark.slow
@pytest.mark.parametrize("piece", PIECES["model"], ids=[p.stem for p in PIECES["model"]])
def test_network_piece_composes_with_a_run(piece: Path, store: Path) -> None:
    cli = build(["--config", str(CONFIGS / "synthetic.yaml"), "--model.net", str(piece)], store)
    init_args = yaml.safe_load(piece.read_text())["init_args"]
    assert {k: _plain(cli.model.net.config[k]) for k in init_args} == init_args
    check_fits(cli, train=True)


@pytest.mark.slow
@pytest.mark.parametrize("piece", PIECES["data"], ids=[p.stem for p in PIECES["data"]])
def test_data_piece_composes_with_a_run(piece: Path, store: Path) -> None:
    extra = (["--data.satellite_stores", f"[{store}]"]
             if "satellite_stores" in yaml.safe_load(piece.read_text()) else [])
    run = next((r for r in RUNS if yaml.safe_load(r.read_text())["data"] == f"data/{piece.name}"),
               CONFIGS / "radar.yaml")
    cli = build(["--config", str(run), "--data", str(piece), *extra], store)
    settings = {k: v for k, v in yaml.safe_load(piece.read_text()).items()
                if k not in ("stores", "satellite_stores")}
    assert {k: _plain(cli.config.data[k]) for k in settings} == settings
    check_fits(cli, train=fits_store(cli))


@pytest.mark.parametrize("piece", PIECES["trainer"], ids=[p.stem for p in PIECES["trainer"]])
def test_trainer_piece_is_valid_trainer_settings(piece: Path) -> None:
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(Trainer, "trainer")
    parsed = parser.parse_args(["--trainer", str(piece)])
    for key, value in yaml.safe_load(piece.read_text()).items():
        assert parsed.trainer[key] == value


def test_command_line_lists_and_overrides(store: Path) -> None:
    cli = build(["--config", str(CONFIGS / "synthetic.yaml"), "--data.lead_times", "[10,20]",
                 "--data.step_minutes", "10", "--model.net.init_args.lstm_hidden", "32"], store)
    assert cli.datamodule.stores == [str(store)] and cli.datamodule.spec.lead_times == (10, 20)
    assert cli.model.net.config["lstm_hidden"] == 32


def test_nothing_is_stated_twice() -> None:
    """A run config names its pieces; no key of a piece is repeated in the run config, and
    network pieces leave the input shape to the data settings."""
    derived = {"input_channels", "context_frames", "input_size", "target_size", "lead_channels"}
    for piece in PIECES["model"]:
        assert not derived & set(yaml.safe_load(piece.read_text())["init_args"]), piece.name
    for run in RUNS:
        config = yaml.safe_load(run.read_text())
        assert isinstance(config["model"]["net"], str) and isinstance(config["data"], str)
        assert (CONFIGS / config["model"]["net"]).is_file() and (CONFIGS / config["data"]).is_file()
