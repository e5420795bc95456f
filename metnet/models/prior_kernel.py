"""The prior's neighbourhood histograms on a CPU, in one pass per lead (numba).

:meth:`metnet.models.prior.ExtrapolationPrior.histograms` builds, for every pixel and
lead, the bin frequencies of a square neighbourhood and of that neighbourhood moved along
the bins onto the pixel's own bin. In torch that is a dozen passes over 25 planes per lead
(indicator planes, two running sums, their differences, a gather, two divisions); here a
sliding window keeps one histogram per column and one per pixel, so each pixel costs a few
additions per bin and every output value is written once. The result is the same to the
bit (a test compares both); torch's form remains for other devices.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def neighbourhood_fractions(bins: np.ndarray, radii: np.ndarray, margin: int, k: int,
                            out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write into ``out`` (N, C >= 2, K, Ht, Wt) float32 the bin frequencies of the centred
    (``out[:, 0]``) and plain (``out[:, 1]``) neighbourhoods of half-width ``radii[n]``
    (pixels, at most ``margin``) around each target pixel, from bin indices ``bins``
    (N, Ht + 2 margin, Wt + 2 margin) in [0, K).

    The centred neighbourhood's cumulative counts are the plain one's read ``centre -
    median`` bins lower (``centre`` the pixel's bin, ``median`` the number of bins whose
    cumulative count is at most half the members), clamped to the ends, the last bin
    holding every member: :func:`metnet.models.prior._recentred_cumulative`."""
    n, height, width = bins.shape
    ht, wt = height - 2 * margin, width - 2 * margin
    for i in numba.prange(n):
        r = radii[i]
        side = 2 * r + 1
        members = side * side
        fraction = np.empty(members + 1, np.float32)  # count -> count / members, as torch
        for count in range(members + 1):
            fraction[count] = np.float32(count) / np.float32(members)
        first = margin - r  # first row and column any window reads
        columns = wt + 2 * r
        column = np.zeros((columns, k), np.int32)  # counts per bin of each column's window
        for c in range(columns):
            for row in range(first, first + side):
                column[c, bins[i, row, first + c]] += 1
        window = np.zeros(k, np.int32)
        below = np.zeros(k + 1, np.int32)  # below[b + 1]: members in bins <= b
        row = np.zeros((2, k, wt), np.float32)  # one output row, written out at once
        for y in range(ht):
            window[:] = 0
            for c in range(side):
                for b in range(k):
                    window[b] += column[c, b]
            for x in range(wt):
                if x:
                    for b in range(k):
                        window[b] += column[x + side - 1, b] - column[x - 1, b]
                if window[0] == members:  # all dry (the pixel too): both all in bin 0
                    for b in range(k):
                        row[0, b, x] = row[1, b, x] = np.float32(b == 0)
                    continue
                median = 0
                for b in range(k):
                    below[b + 1] = below[b] + window[b]
                    median += below[b + 1] <= members // 2
                    row[1, b, x] = fraction[window[b]]
                shift = median + 1 - bins[i, y + margin, x + margin]
                previous = 0
                for b in range(k):
                    source = k if b == k - 1 else min(max(b + shift, 0), k)
                    row[0, b, x] = fraction[below[source] - previous]
                    previous = below[source]
            out[i, 0, :, y, :] = row[0]
            out[i, 1, :, y, :] = row[1]
            if y + 1 < ht:  # move every column's window one row down
                for c in range(columns):
                    column[c, bins[i, first + y, first + c]] -= 1
                    column[c, bins[i, first + y + side, first + c]] += 1


@numba.njit(parallel=True, cache=True)
def error_fractions(value: np.ndarray, error: np.ndarray, edges: np.ndarray, dry: bool,
                    margin: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write into ``out`` (N, K, Ht, Wt) float32 the bin frequencies of the error ensemble:
    the pixel's value plus each error of the 3 x 3 pixels around it, from ``value`` and
    ``error`` (N, Ht + 2 margin, Wt + 2 margin) float32 in the input transform (unknown:
    0), binned by ``edges`` (K + 1,) in the input transform (``dry``: bin 0 holds values at
    or below the first edge). Pixels whose value and errors are all at most 0 are dry.
    As :meth:`metnet.models.prior.ExtrapolationPrior._error_histograms`, each member adding
    1/9 in the same order."""
    n, height, width = value.shape
    k, ht, wt = out.shape[1], out.shape[2], out.shape[3]
    share = np.float32(1 / 9)
    for i in numba.prange(n):
        row = np.zeros((k, wt), np.float32)
        for y in range(ht):
            row[:] = 0
            for x in range(wt):
                own = value[i, y + margin, x + margin]
                wet = own > 0
                for dr in range(-1, 2):
                    for dc in range(-1, 2):
                        wet |= error[i, y + margin + dr, x + margin + dc] > 0
                if not wet:
                    row[0, x] = 1
                    continue
                for dr in range(-1, 2):
                    for dc in range(-1, 2):
                        member = own + error[i, y + margin + dr, x + margin + dc]
                        b = 0
                        if not (dry and member <= edges[0]):
                            while b < k - 1 and edges[b + 1] <= member:
                                b += 1
                        row[b, x] += share
            out[i, :, y, :] = row
