"""Samples for training and evaluation: windows, splits, transforms and the LightningDataModule."""

from metnet.data.datamodule import NowcastDataModule

__all__ = ["NowcastDataModule"]
