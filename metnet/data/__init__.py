"""Samples for training and evaluation: windows, splits, transforms and the LightningDataModule.

``NowcastDataModule`` is imported on first use, so that the light modules of this package
(``transforms``, ``windows``) can be imported without Lightning or pysteps (the network's
head uses :mod:`metnet.data.transforms`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metnet.data.datamodule import NowcastDataModule

__all__ = ["NowcastDataModule"]


def __getattr__(name: str) -> Any:
    if name == "NowcastDataModule":
        from metnet.data.datamodule import NowcastDataModule

        return NowcastDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
