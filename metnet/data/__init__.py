"""Samples for training and evaluation: windows, splits, sampling and the LightningDataModule."""

from metnet.data.datamodule import NowcastDataModule

__all__ = ["NowcastDataModule"]
