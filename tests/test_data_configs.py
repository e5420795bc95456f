"""configs/data/*.yaml are valid NowcastDataModule settings for LightningCLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningArgumentParser

from metnet.data.datamodule import NowcastDataModule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "data").glob("*.yaml"))


def _parser() -> LightningArgumentParser:
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(NowcastDataModule, "data")
    return parser


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_builds_a_datamodule(config):
    parser = _parser()
    data = parser.instantiate(parser.parse_args(["--data", str(config)]))["data"]
    assert isinstance(data, NowcastDataModule) and data.num_channels >= 2
    assert data.stores and all(s.endswith(".zarr") for s in data.stores)


def test_command_line_lists_and_overrides():
    parser = _parser()
    synthetic = CONFIGS[0].with_name("synthetic.yaml")
    cfg = parser.parse_args(["--data", str(synthetic), "--data.stores", "[a.zarr,b.zarr]",
                             "--data.lead_times", "[10,20]", "--data.step_minutes", "10"])
    data = parser.instantiate(cfg)["data"]
    assert data.stores == ["a.zarr", "b.zarr"] and data.spec.lead_times == (10, 20)
