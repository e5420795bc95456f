"""The eight symmetries of the square, applied alike to every spatial field of a sample.

Rain fields and their motion have no preferred orientation at nowcasting scales, so a
training sample rotated or reflected is another valid sample: eight for the price of one.
A symmetry is a number ``k`` in ``0..7`` whose bits say: transpose (1), then flip the rows
(2), then flip the columns (4). It moves pixels, and it turns motion vectors with them:
a transpose swaps the (u: +x, v: +y) components, a row flip negates v, a column flip u.
Because the target is the central square of the context, a symmetry of the context square
maps the target onto the target.
"""

from __future__ import annotations

import numpy as np

SYMMETRIES = 8
TRANSPOSE, FLIP_ROWS, FLIP_COLS = 1, 2, 4


def transform(planes: np.ndarray, k: int) -> np.ndarray:
    """Planes (..., H, W) under symmetry ``k``: a view (H == W for a transpose)."""
    if k & TRANSPOSE:
        planes = planes.swapaxes(-1, -2)
    if k & FLIP_ROWS:
        planes = planes[..., ::-1, :]
    if k & FLIP_COLS:
        planes = planes[..., ::-1]
    return planes


def transform_inplace(planes: np.ndarray, k: int, vectors: tuple[int, int] | None = None,
                      axis: int = -3) -> None:
    """Apply symmetry ``k`` to planes (..., C, H, W) in place, turning the vector held in
    channels ``vectors`` = (u, v) along ``axis`` with the field."""
    if k == 0:
        return
    planes[...] = transform(planes, k).copy()
    if vectors is None:
        return
    u, v = (np.take(planes, c, axis=axis).copy() for c in vectors)
    if k & TRANSPOSE:
        u, v = v, u
    index = [slice(None)] * planes.ndim
    for channel, values, flipped in ((vectors[0], u, k & FLIP_COLS),
                                     (vectors[1], v, k & FLIP_ROWS)):
        index[axis] = channel
        planes[tuple(index)] = -values if flipped else values
