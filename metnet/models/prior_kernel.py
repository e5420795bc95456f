"""The prior on a CPU (numba).

:class:`metnet.models.prior.ExtrapolationPrior` builds, for every pixel and lead, the bin
frequencies of a square neighbourhood, of that neighbourhood moved along the bins onto the
pixel's own bin (pinned: a point mass in that bin, which pins the mixture's median), of a
wider square neighbourhood (if any) and of the error ensemble, then the log of their
mixture. In torch that is a dozen passes over 25 planes per lead and three or four
histograms kept for the mixture; here a sliding window per neighbourhood keeps one
histogram per column and one per pixel, so each pixel costs a few additions per bin. Most
of a radar domain is dry, and there the work is skipped: a window moving between two dry
columns keeps its counts, and a pixel whose every ensemble is dry is written as such, with
no histogram, mixture or pin, and without reading its weights (a third of the prior's time
on KNMI's domain, BENCHMARKS.md):

* :func:`histograms`: the histograms, one output row at a time, the same to the bit as
  torch's form (a test), which remains for other devices and for training, where the
  mixture needs gradients;
* :func:`mixture`: ``mixture + floor`` (pinned: ``pinned mixture + floor``) straight from
  each pixel's window, never keeping the histograms (inference), the bins last in memory
  as the head adds its corrections, and given their exponentials the corrected
  probabilities, each pixel normalised as it is made: torch's result up to float32
  rounding."""

from __future__ import annotations

import numba
import numpy as np

#: LLVM's fast-math flags for the mixture (inference), which is torch's result up to float32
#: rounding anyway: sums may be reordered and multiply-adds fused, which lets its loops over
#: the bins vectorise. Not the flags that assume no NaN or infinity, and not on the
#: histograms, which equal torch's to the bit.
FAST = {"contract", "reassoc", "nsz", "arcp"}


@numba.njit(cache=True)
def _input_bin(value: float, edges: np.ndarray, dry: bool) -> int:  # pragma: no cover
    """The bin of ``value`` (the input transform) among ``edges`` (K + 1,), as
    :func:`metnet.distribution.rain_to_bin` bins rates: the number of inner edges at or below
    it, and with a ``dry`` bin 0 at or below the first edge. Every edge is counted: a count
    without branches, which vectorises, costs less than a walk along the edges, whose length
    the branch predictor cannot guess (BENCHMARKS.md)."""
    if dry and value <= edges[0]:
        return 0
    b = 0
    for e in range(1, len(edges) - 1):
        b += edges[e] <= value
    return b


@numba.njit(cache=True)
def _fractions(members: int) -> np.ndarray:  # pragma: no cover
    """count / members (float32, as torch divides) for every count 0..members."""
    out = np.empty(members + 1, np.float32)
    for count in range(members + 1):
        out[count] = np.float32(count) / np.float32(members)
    return out


@numba.njit(cache=True)
def _column_counts(bins: np.ndarray, first: int, side: int, columns: int,
                   k: int) -> np.ndarray:  # pragma: no cover
    """Counts per bin (columns, K) of the ``side`` rows from ``first`` of each column from
    ``first`` of one plane of bin indices (H, W): int16 (a count is at most ``side``), so
    that the column counts of both neighbourhoods stay in the fastest cache."""
    column = np.zeros((columns, k), np.int16)
    for c in range(columns):
        for row in range(first, first + side):
            column[c, bins[row, first + c]] += 1
    return column


@numba.njit(cache=True)
def _lead_state(bins: np.ndarray, first: int, side: int, k: int,
                wt: int) -> tuple:  # pragma: no cover
    """What one lead's rows are made with: the fractions of ``side``^2 members, the column
    counts of the first target row's windows, the window and cumulative counts (K,) and
    (K + 1,), and the rows (2, K, Wt) of the neighbourhoods and (K, Wt) of the error
    ensemble."""
    return (_fractions(side * side), _column_counts(bins, first, side, wt + side - 1, k),
            np.zeros(k, np.int32), np.zeros(k + 1, np.int32), np.zeros((2, k, wt), np.float32),
            np.zeros((k, wt), np.float32))


@numba.njit(cache=True)
def _move_down(bins: np.ndarray, column: np.ndarray, y: int, first: int,
               side: int) -> None:  # pragma: no cover
    """Move every column's window from target row ``y`` to ``y + 1``."""
    for c in range(column.shape[0]):
        column[c, bins[first + y, first + c]] -= 1
        column[c, bins[first + y + side, first + c]] += 1


@numba.njit(cache=True)
def _neighbourhood_row(bins: np.ndarray, column: np.ndarray, y: int, margin: int, side: int,
                       fraction: np.ndarray, window: np.ndarray, below: np.ndarray,
                       pinned: bool, row: np.ndarray) -> None:  # pragma: no cover
    """Write into ``row`` (2, K, Wt) the centred (``pinned``: a point mass in the pixel's
    own bin) and plain neighbourhoods' bin frequencies along target row ``y``, from the
    column counts of that row's windows.

    The centred neighbourhood's cumulative counts are the plain one's read ``centre -
    median`` bins lower (``centre`` the pixel's bin, ``median`` the number of bins whose
    cumulative count is at most half the members), clamped to the ends, the last bin
    holding every member: :func:`metnet.models.prior._recentred_cumulative`."""
    k, wt = row.shape[1], row.shape[2]
    members = side * side
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
        for b in range(k):  # below[b + 1]: members in bins <= b
            below[b + 1] = below[b] + window[b]
            median += below[b + 1] <= members // 2
            row[1, b, x] = fraction[window[b]]
        if pinned:
            for b in range(k):
                row[0, b, x] = np.float32(b == bins[y + margin, x + margin])
            continue
        shift = median + 1 - bins[y + margin, x + margin]
        previous = 0
        for b in range(k):
            source = k if b == k - 1 else min(max(b + shift, 0), k)
            row[0, b, x] = fraction[below[source] - previous]
            previous = below[source]


@numba.njit(cache=True)
def _error_row(value: np.ndarray, error: np.ndarray, y: int, margin: int, edges: np.ndarray,
               dry: bool, row: np.ndarray) -> None:  # pragma: no cover
    """Write into ``row`` (K, Wt) the error ensemble's bin frequencies along target row
    ``y``: the pixel's value plus each error of the 3 x 3 pixels around it (planes (H, W)
    in the input transform), binned by ``edges`` in the input transform, each member adding
    1/9 in the order of torch's form; pixels whose value and errors are all at most 0 are
    dry."""
    wt = row.shape[1]
    share = np.float32(1 / 9)
    row[:] = 0
    for x in range(wt):
        own = value[y + margin, x + margin]
        wet = own > 0
        for dr in range(-1, 2):
            for dc in range(-1, 2):
                wet |= error[y + margin + dr, x + margin + dc] > 0
        if not wet:
            row[0, x] = 1
            continue
        for dr in range(-1, 2):
            for dc in range(-1, 2):
                member = own + error[y + margin + dr, x + margin + dc]
                row[_input_bin(member, edges, dry), x] += share


@numba.njit(parallel=True, cache=True)
def histograms(bins: np.ndarray, radii: np.ndarray, wide_radii: np.ndarray, margin: int,
               value: np.ndarray, error: np.ndarray, edges: np.ndarray, dry: bool,
               pinned: bool, out: np.ndarray) -> None:  # pragma: no cover
    """Write into ``out`` (N, C, K, Ht, Wt) float32 the bin frequencies of the centred
    (``pinned``: a point mass in the pixel's own bin) and plain neighbourhoods of
    half-width ``radii[n]`` (pixels, at most ``margin``), then where ``wide_radii[n]`` is
    at least 0 of the wide neighbourhood of that half-width, then, if C has room, of the
    error ensemble.

    Args:
        bins: (N, Ht + 2 margin, Wt + 2 margin) bin index of each pixel's rate, in [0, K).
        value, error: (N, Ht + 2 margin, Wt + 2 margin) float32, the extrapolated value and
            the last step's error in the input transform (unknown: 0), read only with the
            error ensemble.
        edges: (K + 1,) bin edges in the input transform; ``dry``: the first bin is dry.
    """
    n, k, wt = out.shape[0], out.shape[2], out.shape[4]
    wide = n > 0 and wide_radii[0] >= 0
    errors = out.shape[1] == 3 + wide
    for i in numba.prange(n):
        side, first = 2 * radii[i] + 1, margin - radii[i]
        fraction, column, window, below, row, error_row = _lead_state(bins[i], first, side,
                                                                      k, wt)
        wide_side = 2 * max(wide_radii[i], 0) + 1
        wide_first = margin - max(wide_radii[i], 0)
        # without a wide neighbourhood its state is made for one column, never read
        wide_fraction, wide_column, _, _, wide_row, _ = _lead_state(bins[i], wide_first,
                                                                    wide_side, k,
                                                                    wt if wide else 1)
        for y in range(out.shape[3]):
            _neighbourhood_row(bins[i], column, y, margin, side, fraction, window, below, pinned,
                               row)
            out[i, 0, :, y, :] = row[0]
            out[i, 1, :, y, :] = row[1]
            if wide:  # its centred row (pinned: the pixel's own bin) is not kept
                _neighbourhood_row(bins[i], wide_column, y, margin, wide_side, wide_fraction,
                                   window, below, True, wide_row)
                out[i, 2, :, y, :] = wide_row[1]
            if errors:
                _error_row(value[i], error[i], y, margin, edges, dry, error_row)
                out[i, out.shape[1] - 1, :, y, :] = error_row
            if y + 1 < out.shape[3]:
                _move_down(bins[i], column, y, first, side)
                if wide:
                    _move_down(bins[i], wide_column, y, wide_first, wide_side)


@numba.njit(cache=True)
def _first_window(column: np.ndarray, side: int,
                  window: np.ndarray) -> None:  # pragma: no cover
    """Write into ``window`` (K,) the counts per bin of a row's first window: the sum of the
    first ``side`` column counts (columns, K)."""
    window[:] = 0
    for c in range(side):
        for b in range(len(window)):
            window[b] += column[c, b]


@numba.njit(cache=True)
def _move_right(column: np.ndarray, x: int, side: int,
                window: np.ndarray) -> None:  # pragma: no cover
    """Move the window (K,) of ``side`` columns (column counts (columns, K)) from target
    column ``x - 1`` to ``x``; nothing changes between two dry columns."""
    if column[x + side - 1, 0] < side or column[x - 1, 0] < side:
        for b in range(len(window)):
            window[b] += column[x + side - 1, b] - column[x - 1, b]


@numba.njit(cache=True, fastmath=FAST)
def _neighbourhoods_into(window: np.ndarray, members: int, centre: int, centred: float,
                         plain: float, wide_window: np.ndarray, wide: float,
                         floor: np.float32, out: np.ndarray) -> None:  # pragma: no cover
    """Write into ``out`` (K,) ``floor + plain * window + wide * wide_window + centred *
    window moved`` (window (K,) the members per bin of one pixel's neighbourhood,
    wide_window those of its wide neighbourhood, ``centred``, ``plain`` and ``wide`` the
    neighbourhoods' weights per member; ``wide`` 0: none): the centred neighbourhood moves
    each member ``centre - median`` bins up, clamped to the ends (``median`` the first bin
    whose cumulative count passes half the members): the form of
    :func:`_neighbourhood_row` without its cumulative counts."""
    k, cumulative, median = len(out), 0, len(out) - 1
    if wide == 0:
        for b in range(k):
            out[b] = floor + plain * window[b]
    else:
        for b in range(k):
            out[b] = floor + plain * window[b] + wide * wide_window[b]
    if centred == 0:  # a pinned prior's
        return
    for b in range(k):
        cumulative += window[b]
        if cumulative > members // 2:
            median = b
            break
    move = centre - median
    for b in range(k):
        out[min(max(b + move, 0), k - 1)] += centred * window[b]


@numba.njit(cache=True)
def _error_is_wet(value: np.ndarray, error: np.ndarray, y: int, x: int) -> bool:  # pragma: no cover
    """Whether a member of the error ensemble at pixel ``(y, x)`` can be wet: the pixel's
    own value or an error of the 3 x 3 pixels around it positive (planes (H, W) with 0
    where unknown, :func:`_known_planes`)."""
    wet = value[y, x] > 0
    for dr in range(-1, 2):
        for dc in range(-1, 2):
            wet |= error[y + dr, x + dc] > 0
    return wet


@numba.njit(cache=True, fastmath=FAST)
def _add_error_members(value: np.ndarray, error: np.ndarray, y: int, x: int,
                       edges: np.ndarray, dry: bool, weight: float,
                       out: np.ndarray) -> None:  # pragma: no cover
    """Add to ``out`` (K,) ``weight`` times the error ensemble's bin frequencies at pixel
    ``(y, x)`` of the planes (H, W) (:func:`_error_row`; 0 where unknown,
    :func:`_known_planes`): all in the first bin where the value and the errors around are
    at most 0, else 1/9 per member (:func:`_input_bin`)."""
    if not _error_is_wet(value, error, y, x):
        out[0] += weight
        return
    share, own = weight / np.float32(9), value[y, x]
    for dr in range(-1, 2):
        for dc in range(-1, 2):
            out[_input_bin(own + error[y + dr, x + dc], edges, dry)] += share


@numba.njit(cache=True)
def _pin_median(pixel: np.ndarray, first: int, last: int, margin: float,
                floor: np.float32) -> None:  # pragma: no cover
    """Pin the median of the bin probabilities ``pixel`` (K,) into bins ``[first, last)``
    and add ``floor``: :func:`metnet.models.prior.pin_median`, the cumulative probability
    below ``first`` capped at ``1/2 - margin``, from ``last - 1`` on raised to
    ``1/2 + margin``."""
    low, high = np.float32(0.5 - margin), np.float32(0.5 + margin)
    cumulative, previous = np.float32(0), np.float32(0)
    for b in range(len(pixel)):
        cumulative += pixel[b]
        pinned = cumulative
        if b < first:
            pinned = min(cumulative, low)
        elif b >= last - 1:
            pinned = max(cumulative, high)
        pixel[b] = pinned - previous + floor
        previous = pinned


@numba.njit(cache=True, fastmath=FAST)
def _corrected(pixel: np.ndarray, factors: np.ndarray,
               least: np.float32) -> bool:  # pragma: no cover
    """Multiply the mixture ``pixel`` (K,) by ``factors`` (K,), the exponentials of the
    head's corrections, and normalise it to sum to 1: the softmax of ``log(pixel) +
    corrections``. False, ``pixel`` then spoilt, where its sum is below ``least`` or not
    finite (corrections beyond about +-80)."""
    total = np.float32(0)
    for b in range(len(pixel)):
        pixel[b] *= factors[b]
        total += pixel[b]
    if not (total >= least and total < np.inf):
        return False
    scale = np.float32(1) / total
    for b in range(len(pixel)):
        pixel[b] *= scale
    return True


@numba.njit(cache=True)
def _plane_bins(planes: np.ndarray, edges: np.ndarray, dry: bool) -> np.ndarray:  # pragma: no cover
    """Bin index (H, W) of each pixel of one lead's planes (Cl, H, W) (channel 0 the value in
    the input transform, channel 1 where it is known; unknown or negative counts as no
    rain), binned by ``edges`` (K + 1,) in the input transform as
    :func:`metnet.distribution.rain_to_bin` bins rates: the number of inner edges at or
    below the value, and with a ``dry`` bin 0 at or below the first edge."""
    zero = np.float32(0)
    out = np.empty(planes.shape[1:], np.int32)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            value = max(planes[0, y, x], zero) if planes[1, y, x] > 0.5 else zero
            out[y, x] = _input_bin(value, edges, dry)
    return out


@numba.njit(cache=True)
def _known_planes(planes: np.ndarray, error_channel: int) -> tuple:  # pragma: no cover
    """The value (channel 0) and the error (``error_channel``) planes (H, W) of one lead's
    planes (Cl, H, W), 0 where unknown (channel 1 at most 1/2): what the error ensemble
    reads, made once per lead rather than checked once per member."""
    value = np.zeros(planes.shape[1:], np.float32)
    error = np.zeros(planes.shape[1:], np.float32)
    for y in range(value.shape[0]):
        for x in range(value.shape[1]):
            if planes[1, y, x] > 0.5:
                value[y, x] = planes[0, y, x]
                error[y, x] = planes[error_channel, y, x]
    return value, error


@numba.njit(parallel=True, cache=True)
def mixture(planes: np.ndarray, error_channel: int, radii: np.ndarray, wide_radii: np.ndarray,
            margin: int, edges: np.ndarray, dry: bool, weights: np.ndarray, floor: float,
            pins: np.ndarray, intervals: np.ndarray, factors: np.ndarray, least: float,
            out: np.ndarray) -> int:  # pragma: no cover
    """Write into ``out`` (N, Ht, Wt, K) float32, the bins last, ``sum_c weights[:, c] *
    histogram_c + floor``, the histograms those of :func:`histograms` that are mixed (not a
    pinned prior's own bin), weights (N, C, Ht, Wt) float32 in their order (C of them, one
    fewer than the histograms where pinned), summing to 1 at each pixel (a softmax: a pixel
    whose every ensemble is dry is written without reading them), each pixel's made in turn
    from a sliding window's counts and never kept. (Its log is left to torch, whose
    vectorised log is several times faster than a scalar one.) With margins ``pins`` (N,)
    at least 0 (all leads or none, as ``pins[0]`` says) the prior is pinned (no centred
    neighbourhood, the plain one's weight first): the sum's median is pinned into the bins
    ``intervals[b]`` (K, 2) around the pixel's own bin ``b`` by lead i's margin ``pins[i]``
    (:func:`_pin_median`) before the floor is added; negative: not pinned. With
    ``factors`` each pixel is then multiplied by its factors and normalised
    (:func:`_corrected`): the head's corrected probabilities.

    Returns the number of pixels whose corrected sum is below ``least`` or not finite (0
    without ``factors``): where there are any, ``out`` is spoilt.

    Args:
        planes: (N, Cl, Ht + 2 margin, Wt + 2 margin) float32 per-lead inputs, read in place
            (channel 0 the value in the input transform, 1 where it is known, and with the
            error ensemble ``error_channel`` the last step's error); the pixels' bins are
            made here, in the input transform (the same as torch's in rain rate up to
            rounding at the edges).
        radii: (N,) neighbourhood half-widths, at most ``margin``.
        wide_radii: (N,) the wide neighbourhood's half-widths, at most ``margin``, its
            weight the one after the plain neighbourhood's; negative: none.
        edges: (K + 1,) bin edges in the input transform; ``dry``: the first bin is dry.
        factors: (N, Ht / p, Wt / p, p, p, K) float32, the exponentials of the head's
            corrections in blocks of p x p pixels (p a power of 2); (1, 1, 1, 1, 1, 0):
            none.
    """
    n, ht, wt, k = out.shape
    floor32 = np.float32(floor)
    pinned = n > 0 and pins[0] >= 0
    wide = n > 0 and wide_radii[0] >= 0
    errors = error_channel >= 0
    base = np.float32(0) if pinned else floor32  # pinned: the floor comes after the pin
    o = 0 if pinned else 1  # the plain neighbourhood's weight
    all_dry = np.float32(1) + floor32  # the first bin of a pixel whose ensembles are dry
    corrects = factors.shape[5] == k  # a placeholder has no bins
    # the head's blocks are 2^shift pixels a side: a shift and a mask per pixel, where a
    # division and a remainder took 6-8 % more of the kernel's time
    shift = 0
    while (1 << shift) < factors.shape[3]:
        shift += 1
    mask = (1 << shift) - 1
    least32 = np.float32(least)
    spoilt = 0
    for j in numba.prange(n):
        # leads taken from both ends in turn: each thread's contiguous share of them mixes
        # short and long ones, whose costs differ
        i = j // 2 if j % 2 == 0 else n - 1 - j // 2
        bins = _plane_bins(planes[i], edges, dry)
        value = error = np.zeros((1, 1), np.float32)  # read only with an error ensemble
        if error_channel >= 0:
            value, error = _known_planes(planes[i], error_channel)
        side, first = 2 * radii[i] + 1, margin - radii[i]
        members = side * side
        share = np.float32(1) / np.float32(members)
        column = _column_counts(bins, first, side, wt + side - 1, k)
        window = np.zeros(k, np.int32)
        same = wide and wide_radii[i] == radii[i]
        slides = wide and not same  # the wide window, where it is not the first
        wide_side = 2 * wide_radii[i] + 1 if slides else 1
        wide_first = margin - wide_radii[i] if slides else margin
        wide_members = wide_side * wide_side
        wide_share = np.float32(1) / np.float32(wide_members)
        # where the wide window does not slide its counts are never read: none made
        wide_column = (_column_counts(bins, wide_first, wide_side, wt + wide_side - 1, k)
                       if slides else np.zeros((1, k), np.int16))
        wide_window = np.zeros(k, np.int32)
        for y in range(ht):
            # the factors of row y's pixels, pixel x's at [x >> shift, x & mask]
            row_factors = (factors[i, y >> shift, :, y & mask] if corrects
                           else factors[0, 0, :, 0])
            _first_window(column, side, window)
            if slides:
                _first_window(wide_column, wide_side, wide_window)
            for x in range(wt):
                if x:
                    _move_right(column, x, side, window)
                    if slides:
                        _move_right(wide_column, x, wide_side, wide_window)
                pixel = out[i, y, x]
                dry_windows = window[0] == members and (not slides
                                                        or wide_window[0] == wide_members)
                if dry_windows and not (
                        errors and _error_is_wet(value, error, y + margin, x + margin)):
                    # every ensemble dry: all the mass (the weights sum to 1) in the first
                    # bin, where a pin changes nothing; its weights are not even read
                    pixel[:] = floor32
                    pixel[0] = all_dry
                    if corrects and not _corrected(
                            pixel, row_factors[x >> shift, x & mask], least32):
                        spoilt += 1
                    continue
                w, centre = weights[i, :, y, x], bins[y + margin, x + margin]
                centred = np.float32(0) if pinned else w[0]
                # a wide neighbourhood as wide as the first is the first: its weight adds
                plain = w[o] + w[o + 1] if same else w[o]
                wide_weight = w[o + 1] * wide_share if slides else np.float32(0)
                if window[0] == members and wide_weight == 0:  # all dry (the pixel too)
                    pixel[:] = base
                    pixel[0] += centred + plain
                elif window[0] == members:  # the centred and plain ones in bin 0
                    _neighbourhoods_into(window, members, centre, np.float32(0),
                                         np.float32(0), wide_window, wide_weight, base, pixel)
                    pixel[0] += centred + plain
                else:
                    _neighbourhoods_into(window, members, centre, centred * share,
                                         plain * share, wide_window, wide_weight, base, pixel)
                if errors:
                    _add_error_members(value, error, y + margin, x + margin, edges, dry,
                                       w[len(w) - 1], pixel)
                if pinned:
                    _pin_median(pixel, intervals[centre, 0], intervals[centre, 1], pins[i],
                                floor32)
                if corrects and not _corrected(
                        pixel, row_factors[x >> shift, x & mask], least32):
                    spoilt += 1
            if y + 1 < ht:
                _move_down(bins, column, y, first, side)
                if slides:
                    _move_down(bins, wide_column, y, wide_first, wide_side)
    return spoilt
