"""Eulerian persistence: the last observed frame, for every lead time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def forecast(rate: np.ndarray | torch.Tensor, lead_times: Sequence[int],
             **_: object) -> np.ndarray | torch.Tensor:
    """The last of the context rates (T, H, W) mm/h, repeated: (L, H, W), same array type
    (a torch tensor gives an expanded view)."""
    last = rate[-1:]
    if isinstance(last, torch.Tensor):
        return last.expand(len(lead_times), *last.shape[1:])
    return np.repeat(last, len(lead_times), axis=0)
