"""Rain rate <-> model input: the one place where the input scaling is defined.

Forward (rain rate in mm/h -> model input, dimensionless)::

    x = log1p(clean(rate)) / LOG_SCALE

with ``LOG_SCALE = 4``: 0 mm/h -> 0, 1 mm/h -> 0.17, 10 mm/h -> 0.60,
100 mm/h -> 1.15, so inputs stay O(1) over the whole physical range (MetNet
used a similar ``log(rate + 0.01) / 4``). The inverse is
``expm1(x * LOG_SCALE)``.

Cleaning of unphysical rates (:func:`clean_rate`), applied to context *and*
target frames when they are read:

* rates above ``max_rate`` (default 200 mm/h) become NaN, i.e. "not
  observed": such values are clutter or decoding artefacts (OPERA holds
  isolated pixels near 8647 mm/h), and clipping them to 200 would teach the
  model extreme rain that never fell. They are masked like pixels outside
  radar coverage and ignored by the loss.
* negative rates become 0.

NaN (no coverage) passes through the forward transform as NaN; the dataset
replaces it by 0 (:func:`rate_to_input_`) and adds a coverage-mask channel.
The transforms work on torch tensors (vectorised, in place where named ``_``).
"""

from __future__ import annotations

import numpy as np
import torch

LOG_SCALE = 4.0
MAX_RATE_MM_H = 200.0


def clean_rate(rate: np.ndarray, max_rate: float = MAX_RATE_MM_H) -> np.ndarray:
    """Negative rates -> 0, rates above ``max_rate`` mm/h -> NaN; in place, returned.

    Args:
        rate: rain rate in mm/h, any shape, float32; NaN where not observed.
        max_rate: largest physical rate in mm/h.
    """
    with np.errstate(invalid="ignore"):
        np.maximum(rate, 0.0, out=rate, where=~np.isnan(rate))
        rate[rate > max_rate] = np.nan
    return rate


def rate_to_input(rate: torch.Tensor) -> torch.Tensor:
    """Forward transform: rain rate (mm/h, >= 0, NaN kept) -> model input, same shape."""
    return torch.log1p(rate) / LOG_SCALE


def rate_to_input_(rate: torch.Tensor) -> torch.Tensor:
    """In-place :func:`rate_to_input`, with NaN (not observed) -> 0; returns ``rate``."""
    return rate.nan_to_num_(0.0).log1p_().div_(LOG_SCALE)


def input_to_rate(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rate_to_input`: model input -> rain rate in mm/h."""
    return torch.expm1(x * LOG_SCALE)
