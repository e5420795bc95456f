"""Where patches go: rain-weighted choice of the patch corner, from coarse statistics.

A patch is the ``context_size`` square whose central ``target_size`` square
is the target region. Candidate corners lie on a lattice of ``stride``
pixels (:class:`metnet.io.sample_index.PatchLattice`); for each frame and candidate the
fractions of the target region that are observed (``cover``) and wet (rate > the rain
threshold) come from the store's sample index (:mod:`metnet.io.sample_index`), computed
once per store and setting, exactly, from integral images. A window's candidate weight is

    weight = eps * cover + wet      (both averaged over the window's lead frames)

so wet targets are oversampled (as MetNet did) and targets outside radar
coverage are never drawn (unless no candidate has coverage: then uniform).
The chosen corner is the lattice point plus a uniform jitter of up to
``stride - 1`` pixels (clipped to the grid), so every position can occur.
"""

from __future__ import annotations

import numpy as np

from metnet.io.sample_index import PatchLattice


class PatchWeights:
    """Coarse per-frame target statistics of one store and the corner draw they drive.

    Attributes:
        rows, cols: lattice corners (pixel row/column of the patch's top-left).
        wet, cover: (T, len(rows) * len(cols)) float16 fractions per frame and candidate.
    """

    def __init__(self, lattice: PatchLattice, wet: np.ndarray, cover: np.ndarray) -> None:
        """Args:
            lattice: the candidate patches.
            wet, cover: (T, K) float16 fractions of the T frames the windows index
                (:func:`metnet.io.sample_index.sample_fractions`).
        """
        if wet.shape != cover.shape or wet.shape[1:] != (len(lattice),):
            raise ValueError(f"wet {wet.shape} and cover {cover.shape} must both be "
                             f"(frames, {len(lattice)}) for this lattice")
        self.stride = lattice.stride
        self.max_row, self.max_col = lattice.max_row, lattice.max_col
        self.rows, self.cols = lattice.rows, lattice.cols
        self.wet, self.cover = wet, cover

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
