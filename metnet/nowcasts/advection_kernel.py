"""Semi-Lagrangian advection on a CPU (numba), one backward trajectory per pixel.

pysteps' scheme (``pysteps.extrapolation.semilagrangian``: the midpoint rule, one inner
iteration, bilinear interpolation as ``scipy.ndimage.map_coordinates(order=1)``) moves
whole displacement planes lead by lead: three interpolations of the domain per lead. A
pixel's trajectory depends only on the motion along it, so here each pixel follows its own
through every lead, in float64 as pysteps, with the rows of the domain split among the
threads; the pixels not observed in the advected frame are skipped, their output NaN.
:func:`metnet.nowcasts.extrapolation.advect` calls it; tests compare the result with
pysteps' float32 field."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _bilinear(plane: np.ndarray, x: float, y: float) -> float:  # pragma: no cover
    """``plane`` (H, W) at (x, y), both inside the outer pixel centres."""
    height, width = plane.shape
    x0, y0 = min(int(x), max(width - 2, 0)), min(int(y), max(height - 2, 0))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    tx, ty = x - x0, y - y0
    top = plane[y0, x0] * (1.0 - tx) + plane[y0, x1] * tx
    bottom = plane[y1, x0] * (1.0 - tx) + plane[y1, x1] * tx
    return top * (1.0 - ty) + bottom * ty


@numba.njit(cache=True)
def _motion_at(motion: np.ndarray, x: float, y: float) -> tuple[float, float]:  # pragma: no cover
    """The motion (2, H, W) at (x, y), edge values beyond the outer pixel centres
    (``map_coordinates``' mode "nearest")."""
    height, width = motion.shape[1:]
    x, y = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    return _bilinear(motion[0], x, y), _bilinear(motion[1], x, y)


@numba.njit(parallel=True, cache=True)
def advect(field: np.ndarray, known: np.ndarray, motion: np.ndarray, steps: np.ndarray,
           out: np.ndarray) -> None:  # pragma: no cover
    """Write into ``out`` (L, H, W) float32 the frame ``field`` (H, W) float64 (0 where not
    observed) advected by ``motion`` (2, H, W) float64 pixels per step (u: +x, v: +y) after
    each lead's ``steps`` (L,) since the one before: 0 beyond the outer pixel centres
    (``map_coordinates``' mode "constant"), NaN where ``known`` (H, W) is False."""
    height, width = field.shape
    for y in numba.prange(height):
        for x in range(width):
            if not known[y, x]:
                out[:, y, x] = np.nan
                continue
            dx, dy = 0.0, 0.0
            ix, iy = motion[0, y, x] * steps[0], motion[1, y, x] * steps[0]
            for lead in range(len(steps)):
                step = steps[lead]
                u, v = _motion_at(motion, x + (dx - ix / 2.0), y + (dy - iy / 2.0))
                dx, dy = dx - u * step, dy - v * step
                u, v = _motion_at(motion, x + dx, y + dy)
                ix, iy = u * step, v * step
                px, py = x + dx, y + dy
                inside = 0.0 <= px <= width - 1.0 and 0.0 <= py <= height - 1.0
                out[lead, y, x] = _bilinear(field, px, py) if inside else 0.0
