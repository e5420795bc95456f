"""Lagrangian extrapolation: pysteps Lucas-Kanade motion and semi-Lagrangian advection.

* :func:`to_db`: rain rate to the dB field optical flow runs on (pysteps' examples: rates
  below 0.1 mm/h and NaN set to -15 dB);
* :func:`motion_field`: Lucas-Kanade motion (``pysteps.motion.get_method("LK")``) of the
  last :data:`MOTION_FRAMES` frames, in pixels per frame step;
* :func:`advect`: semi-Lagrangian advection (``pysteps.nowcasts.get_method("extrapolation")``)
  of one frame, NaN set to 0, with 0 flowing in from outside the domain; pixels not observed
  in that frame are NaN;
* :func:`forecast`: both, as a nowcast method of :mod:`metnet.nowcasts`.

They run on whole frames, never on patches, so rain advected into a patch from outside it
is right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pysteps import motion, nowcasts
from pysteps.utils import transformation

MOTION_FRAMES = 3
DB_THRESHOLD = 0.1  # mm/h: below this, "no rain" in the dB field
DB_ZERO = -15.0  # dB value of no rain (pysteps' examples)


def to_db(rate: np.ndarray) -> np.ndarray:
    """Rain rates (..., H, W) mm/h as dB fields, float64: below :data:`DB_THRESHOLD` and
    NaN set to :data:`DB_ZERO`."""
    db, _ = transformation.dB_transform(np.asarray(rate, dtype=np.float64),
                                        threshold=DB_THRESHOLD, zerovalue=DB_ZERO)
    db[~np.isfinite(db)] = DB_ZERO
    return db


def motion_field(rate: np.ndarray) -> np.ndarray:
    """Lucas-Kanade motion (2, H, W) float32, pixels per step (u: +x, v: +y), of the last
    :data:`MOTION_FRAMES` of ``rate`` (T >= 3, H, W) mm/h (NaN: not observed)."""
    if rate.shape[0] < MOTION_FRAMES:
        raise ValueError(f"motion needs {MOTION_FRAMES} frames, got {rate.shape[0]}")
    return motion.get_method("LK")(to_db(rate[-MOTION_FRAMES:])).astype(np.float32)


def advect(last: np.ndarray, velocity: np.ndarray, lead_steps: Sequence[float]) -> np.ndarray:
    """Semi-Lagrangian extrapolation (L, H, W) float32 mm/h of the frame ``last`` (H, W) by
    ``velocity`` (2, H, W) pixels per step, to each lead (in steps); NaN where ``last`` is."""
    field = np.nan_to_num(last.astype(np.float64), nan=0.0)
    advected = nowcasts.get_method("extrapolation")(
        field, velocity.astype(np.float64), list(lead_steps), extrap_kwargs={"outval": 0.0})
    return np.where(np.isnan(last), np.nan, advected).astype(np.float32)


def forecast(rate: np.ndarray, lead_times: Sequence[int], *, step_minutes: float,
             velocity: np.ndarray | None = None, **_: object) -> np.ndarray:
    """Lagrangian extrapolation (L, H, W) float32 mm/h of context rates (T >= 3, H, W).

    Args:
        rate: context rain rate in mm/h, oldest first, ``step_minutes`` apart; NaN where
            not observed.
        lead_times: L lead times in minutes.
        step_minutes: time between context frames (the motion's time unit).
        velocity: (2, H, W) motion in pixels per step, when already computed
            (default: :func:`motion_field` of ``rate``).
    """
    velocity = motion_field(rate) if velocity is None else velocity
    return advect(rate[-1], velocity, [lead / step_minutes for lead in lead_times])
