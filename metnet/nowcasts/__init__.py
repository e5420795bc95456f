"""Nowcast methods behind one call shape, in the spirit of ``pysteps.nowcasts.get_method``.

Every method is called as ``method(rate, lead_times, *, step_minutes, **options)``:

* ``rate``: past rain rate (T, H, W) in mm/h, oldest first, ``step_minutes`` apart, NaN
  where not observed;
* ``lead_times``: L lead times in minutes;
* it returns, by its :data:`KINDS` entry: ``deterministic`` (L, H, W) mm/h, ``ensemble``
  (M, L, H, W) mm/h, or ``distribution`` an object with batch shape (L, H, W) and
  ``exceedance(t)``, ``quantile(q)``, ``mean()`` and ``crps(obs)`` (torch tensors), a
  :class:`~metnet.distribution.RainRateDistribution` for the model.

=================  ============  ==========================================================
name               kind          options
=================  ============  ==========================================================
``persistence``    deterministic (none)
``extrapolation``  deterministic ``velocity`` (2, H, W) pixels per step (default: LK motion)
``steps``          ensemble      ``km_per_pixel``, ``members``, ``seed``, ``velocity``
``neighbourhood``  distribution  ``velocity``, ``radius`` (the extrapolated neighbourhood)
``model``          distribution  ``net``, ``inputs``, ``calibration``, ``batch_tiles``, ``stride``
=================  ============  ==========================================================

Options a method does not take are ignored, so one set of options can drive every method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

Kind = Literal["deterministic", "ensemble", "distribution"]

#: What each method returns (see the module docstring); each lives in the module of its name.
KINDS: dict[str, Kind] = {
    "persistence": "deterministic",
    "extrapolation": "deterministic",
    "steps": "ensemble",
    "neighbourhood": "distribution",
    "model": "distribution",
}


def get_method(name: str) -> Callable[..., Any]:
    """The nowcast method called ``name`` (see :data:`KINDS`).

    The method's module is imported on first use, so that the data pipeline can use the
    extrapolation method without importing the network's.

    Raises:
        ValueError: naming the known methods.
    """
    if name not in KINDS:
        raise ValueError(f"unknown nowcast method {name!r}; known: {', '.join(KINDS)}")
    return importlib.import_module(f"metnet.nowcasts.{name}").forecast
