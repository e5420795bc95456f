"""Lagrangian extrapolation: pysteps Lucas-Kanade motion and semi-Lagrangian advection.

* :func:`to_db`: rain rate to the dB field optical flow runs on (pysteps' examples: rates
  below 0.1 mm/h and NaN set to -15 dB);
* :func:`motion_field`: Lucas-Kanade motion (``pysteps.motion.get_method("LK")``) of the
  last :data:`MOTION_FRAMES` frames, in pixels per frame step, its sparse vectors
  interpolated as pysteps does (declustered, inverse distance weighting) on a grid every
  :data:`MOTION_GRID` pixels and bilinearly between: pysteps weighs every pixel's 20
  nearest vectors, three quarters of its time on a 2 km national domain, for a field that
  varies over tens of pixels (BENCHMARKS.md: "Motion on a coarser grid");
* :func:`advect`: semi-Lagrangian advection of one frame, NaN set to 0, with 0 flowing in
  from outside the domain; pixels not observed in that frame are NaN. It is pysteps'
  scheme (``pysteps.extrapolation.semilagrangian``: backward trajectories by the midpoint
  rule, one inner iteration, bilinear interpolation), one pixel's trajectory at a time
  (:mod:`metnet.nowcasts.advection_kernel`), which gives pysteps' float32 result to the bit
  (a test) in a fraction of the time;
* :func:`forecast`: both, as a nowcast method of :mod:`metnet.nowcasts`.

They run on whole frames, never on patches, so rain advected into a patch from outside it
is right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pysteps import motion
from pysteps.utils import cleansing, interpolate, transformation

MOTION_FRAMES = 3
DB_THRESHOLD = 0.1  # mm/h: below this, "no rain" in the dB field
DB_ZERO = -15.0  # dB value of no rain (pysteps' examples)
#: Pixels between the points where the sparse motion vectors are interpolated (1: every
#: pixel, as pysteps' dense Lucas-Kanade).
MOTION_GRID = 4
#: pysteps' defaults for the dense Lucas-Kanade field: declustering scale (pixels) and the
#: inverse distance weighting's offset (pixels).
DECLUSTER_SCALE = 20
IDW_OFFSET = 0.5


def to_db(rate: np.ndarray) -> np.ndarray:
    """Rain rates (..., H, W) mm/h as dB fields, float64: below :data:`DB_THRESHOLD` and
    NaN set to :data:`DB_ZERO`."""
    db, _ = transformation.dB_transform(np.asarray(rate, dtype=np.float64),
                                        threshold=DB_THRESHOLD, zerovalue=DB_ZERO)
    db[~np.isfinite(db)] = DB_ZERO
    return db


def motion_field(rate: np.ndarray, grid_step: int | None = None) -> np.ndarray:
    """Lucas-Kanade motion (2, H, W) float32, pixels per step (u: +x, v: +y), of the last
    :data:`MOTION_FRAMES` of ``rate`` (T >= 3, H, W) mm/h (NaN: not observed), interpolated
    on a grid every ``grid_step`` pixels (default :data:`MOTION_GRID`; 1: pysteps' dense
    field to the bit)."""
    grid_step = MOTION_GRID if grid_step is None else grid_step
    if rate.shape[0] < MOTION_FRAMES:
        raise ValueError(f"motion needs {MOTION_FRAMES} frames, got {rate.shape[0]}")
    if grid_step < 1:
        raise ValueError(f"the motion grid step must be at least 1 pixel, got {grid_step}")
    db = to_db(rate[-MOTION_FRAMES:])
    xy, uv = motion.get_method("LK")(db, dense=False)
    return dense_motion(xy, uv, db.shape[1:], grid_step).astype(np.float32)


def dense_motion(xy: np.ndarray, uv: np.ndarray, shape: tuple[int, int],
                 grid_step: int) -> np.ndarray:
    """Sparse motion vectors ``uv`` (n, 2) at pixel coordinates ``xy`` (n, 2) (x, y) as a
    field (2, H, W), float64: pysteps' dense Lucas-Kanade steps (declustering, inverse
    distance weighting of the 20 nearest vectors) at every ``grid_step``-th pixel, the
    weights those of the pixel grid, then bilinear interpolation between; zero without
    vectors."""
    if len(xy):
        xy, uv = cleansing.decluster(xy, uv, DECLUSTER_SCALE, 1)
    if not len(xy):
        return np.zeros((2, *shape))
    height, width = shape
    xgrid, ygrid = (np.arange(0, n - 1 + grid_step, grid_step, dtype=float)
                    for n in (width, height))
    # pysteps measures distances in grid steps: the offset in pixels keeps its weights
    field = interpolate.idwinterp2d(xy, uv, xgrid, ygrid, dist_offset=IDW_OFFSET / grid_step)
    field = field.reshape(2, len(ygrid), len(xgrid))  # pysteps squeezes sides of 1
    if grid_step == 1:
        return field
    size = ((len(ygrid) - 1) * grid_step + 1, (len(xgrid) - 1) * grid_step + 1)
    fine = F.interpolate(torch.from_numpy(field)[None], size=size, mode="bilinear",
                         align_corners=True)[0]
    return fine[:, :height, :width].numpy()


def advect(last: np.ndarray, velocity: np.ndarray, lead_steps: Sequence[float]) -> np.ndarray:
    """Semi-Lagrangian extrapolation (L, H, W) float32 mm/h of the frame ``last`` (H, W) by
    ``velocity`` (2, H, W) pixels per step, to each lead (in steps, increasing); NaN where
    ``last`` is. Float64 throughout, as pysteps, whose result it equals; each pixel's
    trajectory in turn (:mod:`metnet.nowcasts.advection_kernel`)."""
    from metnet.nowcasts import advection_kernel  # numba compiles or loads it at first use

    steps = np.diff(np.concatenate([[0.0], np.asarray(lead_steps, np.float64)]))
    if len(steps) == 0 or np.any(steps <= 0):
        raise ValueError(f"lead steps must be positive and increasing, got {list(lead_steps)}")
    if not np.isfinite(velocity).all():
        raise ValueError("the motion field holds non-finite values")
    known = ~np.isnan(last)
    out = np.empty((len(steps), *last.shape), np.float32)
    advection_kernel.advect(np.where(known, last, 0.0).astype(np.float64), known,
                            np.ascontiguousarray(velocity, np.float64), steps, out)
    return out


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
