"""Where patches go: rain-weighted choice of the patch corner, from coarse statistics.

A patch is the ``context_size`` square whose central ``target_size`` square
is the target region. Candidate corners lie on a lattice of ``stride``
pixels; for each frame and candidate the fractions of the target region that
are observed (``cover``) and wet (rate > ``threshold``) are computed once,
exactly, from integral images. A window's candidate weight is

    weight = eps * cover + wet      (both averaged over the window's lead frames)

so wet targets are oversampled (as MetNet did) and targets outside radar
coverage are never drawn (unless no candidate has coverage: then uniform).
The chosen corner is the lattice point plus a uniform jitter of up to
``stride - 1`` pixels (clipped to the grid), so every position can occur.
"""

from __future__ import annotations

import numpy as np

from metnet.data.frames import StoreFrames


class PatchWeights:
    """Coarse per-frame target statistics of one store and the corner draw they drive.

    Attributes:
        rows, cols: lattice corners (pixel row/column of the patch's top-left).
        wet, cover: (T, len(rows) * len(cols)) float16 fractions per frame and candidate.
    """

    def __init__(
        self,
        frames: StoreFrames,
        context_size: int,
        target_size: int,
        stride: int,
        threshold: float = 0.2,
    ) -> None:
        height, width = frames.shape
        self.context_size, self.stride = context_size, stride
        self.max_row, self.max_col = height - context_size, width - context_size
        self.rows = np.arange(0, self.max_row + 1, stride)
        self.cols = np.arange(0, self.max_col + 1, stride)
        offset = (context_size - target_size) // 2
        top, left = self.rows + offset, self.cols + offset
        n = len(frames.times)
        self.wet = np.empty((n, len(top) * len(left)), np.float16)
        self.cover = np.empty_like(self.wet)
        area = float(target_size * target_size)
        for first, rates in frames.iter_chunks():
            block = slice(first, first + len(rates))
            with np.errstate(invalid="ignore"):
                self.wet[block] = _box_sums(rates > threshold, top, left, target_size) / area
            self.cover[block] = _box_sums(~np.isnan(rates), top, left, target_size) / area

    def weights(self, target_frames: np.ndarray, eps: float) -> np.ndarray:
        """Normalised (n_candidates,) float64 probabilities for a window's lead frames."""
        wet = self.wet[target_frames].astype(np.float32).mean(axis=0)
        cover = self.cover[target_frames].astype(np.float32).mean(axis=0)
        weight = (eps * cover + wet).astype(np.float64)
        total = weight.sum()
        return weight / total if total > 0 else np.full(len(weight), 1.0 / len(weight))

    def draw(self, target_frames: np.ndarray, eps: float, rng: np.random.Generator) -> tuple[
        int, int
    ]:
        """A patch corner (row, col) in pixels, rain-weighted, with jitter."""
        choice = rng.choice(len(self.wet[0]), p=self.weights(target_frames, eps))
        row = self.rows[choice // len(self.cols)] + rng.integers(self.stride)
        col = self.cols[choice % len(self.cols)] + rng.integers(self.stride)
        return int(min(row, self.max_row)), int(min(col, self.max_col))


def _box_sums(mask: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``mask`` (n, H, W) over size x size boxes at all (top, left) pairs: (n, R*C).

    The integral image is only formed at the rows and columns the boxes need.
    """
    rows, row_prefix = _prefix_sums(mask, np.concatenate([top, top + size]), axis=1)
    cols, prefix = _prefix_sums(row_prefix, np.concatenate([left, left + size]), axis=2)
    r0, r1 = np.searchsorted(rows, top)[:, None], np.searchsorted(rows, top + size)[:, None]
    c0, c1 = np.searchsorted(cols, left)[None], np.searchsorted(cols, left + size)[None]
    sums = prefix[:, r1, c1] - prefix[:, r0, c1] - prefix[:, r1, c0] + prefix[:, r0, c0]
    return sums.reshape(mask.shape[0], -1)


def _prefix_sums(values: np.ndarray, at: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``values`` along ``axis`` over ``[0, p)`` for each p in ``at`` (0 <= p <= length).

    Returns the sorted distinct positions and the sums at them (that axis resized to match).
    """
    length = values.shape[axis]
    starts = np.unique(np.concatenate([[0], at[at < length]]))
    bands = np.add.reduceat(values, starts, axis=axis, dtype=np.int32)
    prefix = np.cumsum(bands, axis=axis)
    zero = np.zeros_like(np.take(prefix, [0], axis=axis))
    # prefix[k] sums bands 0..k, i.e. [0, starts[k+1]) (the last: [0, length)).
    return np.append(starts, length), np.concatenate([zero, prefix], axis=axis)
