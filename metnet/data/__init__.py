"""Samples for training and evaluation: windows, splits, sampling and the LightningDataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metnet.data.datamodule import NowcastDataModule

__all__ = ["NowcastDataModule"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the datamodule needs Lightning (seconds to import), which
    # forecasting from a checkpoint does not.
    if name == "NowcastDataModule":
        from metnet.data.datamodule import NowcastDataModule

        return NowcastDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
