"""The sample index of a store: the rain statistics that drive patch sampling, computed once.

The rain-weighted patch draw (:mod:`metnet.data.patches`) needs, for every frame and every
candidate patch of a lattice, the fractions of the candidate's target square that are
observed (``cover``) and wet (rate above a threshold). Computing them reads every pixel of
every frame, which an archive of years cannot afford at each ``setup()``; the index holds
them, (T, K) float16 each (K candidates: about 1 kB per frame for a 512 x 512 grid, 256 px
contexts and a 16 px lattice), and is read in seconds.

One index per store and setting (lattice, threshold, ``max_rate``), a zarr group
``<store name>.sample-index-<key>.zarr`` in the store's cache folder
(:func:`metnet.io.store.cache_folder`: ``.metnet-cache`` beside a local store, a folder
under ``~/.cache/metnet`` for a URL or a read-only store, or ``--data.cache_dir``). It is
kept beside the store rather than in it: a remote or read-only store cannot take it, and a
local store's consolidated metadata is how ``metnet ingest`` commits appends, which a
reader must never rewrite. Layout::

    time   (T,) int64   the indexed frames' times, ns since 1970 (every frame of the store)
    wet    (T, K) float16  fraction of each candidate's target square with rate > threshold
    cover  (T, K) float16  fraction of it observed (not NaN after cleaning)

and attributes: the store (path or URL) and what identifies its contents (creation time,
grid, radar variable), the lattice (grid, context and target sizes, stride, corner rows and
columns), ``threshold_mm_h``, ``max_rate_mm_h`` and ``frames``, the rows committed.

An index whose store has more frames, its first ones unchanged, is extended by reading the
new frames only (``metnet ingest`` does it after appending; ``setup()`` does it for an index
ingest did not see); any other mismatch (a store rewritten at the same path, another grid)
rebuilds it. Rows are committed one chunk at a time (``frames`` is raised after each), so a
killed build resumes where it stopped; a lock file serialises processes (DDP ranks) that
want the same index, except ingest, which never waits for it (an index in use is left to the
next setup to extend).

Rates are cleaned as :func:`metnet.transforms.clean_rate` cleans them (negative -> 0, above
``max_rate`` -> not observed), without importing torch: ingest runs without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from filelock import FileLock, Timeout
from tqdm.auto import tqdm
from zarr.storage import MemoryStore

from metnet.atomic import remove
from metnet.io.store import (
    StoreError,
    cache_folder,
    cache_folders,
    open_group,
    open_store,
    rate_source,
    store_location,
    store_name,
)

INDEX_VERSION = 1
#: Frames read from the store at a time while building (bounds the memory of a build).
READ_FRAMES = 16
#: Target size in bytes of one chunk (and commit) of ``wet`` or ``cover``.
CHUNK_BYTES = 2**20
MAX_CHUNK_FRAMES = 4096

Note = Callable[[str], None]


@dataclass(frozen=True)
class PatchLattice:
    """The candidate patches of a grid: corners every ``stride`` px, in row-major order.

    A patch is the ``context_size`` square at a corner; its target is the central
    ``target_size`` square. Sizes in pixels.
    """

    height: int
    width: int
    context_size: int
    target_size: int
    stride: int

    @property
    def max_row(self) -> int:
        """The largest corner row (the patch touches the bottom edge)."""
        return self.height - self.context_size

    @property
    def max_col(self) -> int:
        """The largest corner column (the patch touches the right edge)."""
        return self.width - self.context_size

    @property
    def rows(self) -> np.ndarray:
        """(R,) corner rows, pixels."""
        return np.arange(0, self.max_row + 1, self.stride)

    @property
    def cols(self) -> np.ndarray:
        """(C,) corner columns, pixels."""
        return np.arange(0, self.max_col + 1, self.stride)

    def __len__(self) -> int:
        """K = R * C, the number of candidates."""
        return len(self.rows) * len(self.cols)

    def fractions(self, rate: np.ndarray, threshold: float,
                  max_rate: float) -> tuple[np.ndarray, np.ndarray]:
        """Wet and observed fractions of every candidate's target square, frame by frame.

        Args:
            rate: (n, H, W) float32 rain rate in mm/h as stored (NaN: not observed), not yet
                cleaned.
            threshold: rate in mm/h above which a pixel is wet.
            max_rate: rates above it (mm/h) are unphysical: neither observed nor wet.

        Returns:
            ``(wet, cover)``, each (n, K) float16.
        """
        offset = (self.context_size - self.target_size) // 2
        top, left = self.rows + offset, self.cols + offset
        area = float(self.target_size * self.target_size)
        with np.errstate(invalid="ignore"):
            physical = ~(rate > max_rate)
            wet = (np.maximum(rate, 0) > float(threshold)) & physical
            observed = ~np.isnan(rate) & physical
        return ((_box_sums(wet, top, left, self.target_size) / area).astype(np.float16),
                (_box_sums(observed, top, left, self.target_size) / area).astype(np.float16))

    def describe(self) -> dict[str, Any]:
        """The lattice as JSON attributes."""
        return {**dataclasses.asdict(self), "rows": self.rows.tolist(),
                "cols": self.cols.tolist()}

    @classmethod
    def from_attributes(cls, attrs: dict[str, Any]) -> PatchLattice:
        """The lattice :meth:`describe` described."""
        return cls(**{field.name: int(attrs[field.name]) for field in dataclasses.fields(cls)})


def sample_fractions(
    store: str | Path,
    lattice: PatchLattice,
    threshold: float,
    max_rate: float,
    frames: np.ndarray | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    note: Note | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(wet, cover)`` (n, K) float16 of store frames ``frames`` (None: all), from the
    store's index for these settings, built or extended first when it lags the store.

    Without a writable cache folder the index is built in memory for this run only (with a
    note saying so).

    Args:
        store: a local path or a URL (:func:`metnet.io.store.open_store`).
        lattice: the candidate patches; its grid must be the store's.
        threshold, max_rate: as for :meth:`PatchLattice.fractions`, mm/h.
        frames: (n,) indices of store frames.
        storage_options: fsspec options of a URL's file system.
        cache_dir: the cache folder's parent (:func:`metnet.io.store.cache_folder`).
        progress: a progress bar while frames are read.
        note: called with one line when the index is built or extended (default: nothing).
    """
    note = note or (lambda _: None)

    def current(target: Path | zarr.Group) -> tuple[_StoreView, zarr.Group | None]:
        view = _StoreView(store, storage_options)
        if (lattice.height, lattice.width) != view.shape:
            raise ValueError(f"{store}: lattice for a {lattice.height} x {lattice.width} "
                             f"grid, the store's is {view.shape[0]} x {view.shape[1]}")
        return view, _current(target, view, _attributes(view, lattice, threshold, max_rate),
                              progress, note)

    try:
        path = cache_folder(store, cache_dir) / _file_name(
            store, _settings(store, lattice, threshold, max_rate))
    except StoreError as err:
        note(f"{err}; the sample index is computed for this run only")
        view, group = current(zarr.open_group(store=MemoryStore(), mode="w"))
    else:
        # the store is opened in the lock: ingest, which appends before it extends the
        # index, is then never seen to have extended the index but not the store
        with FileLock(path.with_name(f".{path.name}.lock")):
            view, group = current(path)
    assert group is not None  # _current builds what is missing
    rows = np.arange(len(view.times)) if frames is None else np.asarray(frames, np.int64)
    return (group["wet"].get_orthogonal_selection((rows, slice(None))),
            group["cover"].get_orthogonal_selection((rows, slice(None))))


def extend_sample_indexes(store: str | Path, progress: bool = True,
                          note: Note | None = None) -> None:
    """Bring every index of a local store in its default cache folders up to date, reading
    only the frames they lack (the hook ``metnet ingest`` calls after writing); remove those
    that no longer match the store (it was rewritten at the same path)."""
    location = store_location(store)
    found = [path for folder in cache_folders(store) if folder.is_dir()
             for path in sorted(folder.glob(f"{store_name(store)}.sample-index-*.zarr"))]
    view: _StoreView | None = None
    note = note or (lambda _: None)
    for path in found:
        try:
            attrs = dict(zarr.open_group(path, mode="r").attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            continue
        if (attrs.get("store") != location
                or attrs.get("metnet_sample_index_version") != INDEX_VERSION):
            continue  # a same-named store elsewhere sharing the folder, or another version
        view = view or _StoreView(store)
        expected = _attributes(view, PatchLattice.from_attributes(attrs["lattice"]),
                               attrs["threshold_mm_h"], attrs["max_rate_mm_h"])
        try:  # never wait: a training setup may be reading the whole archive into it
            with FileLock(path.with_name(f".{path.name}.lock"), timeout=0):
                _current(path, view, expected, progress, note, build=False)
        except Timeout:
            note(f"{store_name(store)}: the sample index {path} is in use (being built by a "
                 "training setup?); not extended now, the next setup extends it")


class _StoreView:
    """What the index needs of a store: its frame times, identity and a frame reader."""

    def __init__(self, store: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.store, self.storage_options = str(store), dict(storage_options or {})
        ds = open_store(self.store, self.storage_options)
        self.source = rate_source(ds)
        self.times = ds["time"].values.astype("datetime64[ns]")
        self.shape = (ds.sizes["y"], ds.sizes["x"])
        x, y = ds["x"].values, ds["y"].values
        self.identity = {
            "created": str(ds.attrs.get("mlcast_created_on", "")),
            "crs": str(ds.attrs["crs"]),
            "x": [float(x[0]), float(x[-1])], "y": [float(y[0]), float(y[-1])],
            "rate_source": {**{k: v for k, v in dataclasses.asdict(self.source).items()
                               if k not in ("scale_factor", "add_offset", "fill_value")},
                            **self.source.packing},
        }
        self._array: zarr.Array | None = None

    def read(self, first: int, last: int) -> np.ndarray:
        """Rain rate (last - first, H, W) float32 in mm/h, uncleaned, of frames
        ``first:last``."""
        if self._array is None:
            self._array = open_group(self.store, self.storage_options)[self.source.variable]
        try:
            return self.source.raw_to_rate(self._array[first:last])
        except Exception as err:  # codecs raise anything from ValueError to RuntimeError
            when = np.datetime_as_string(self.times[[first, last - 1]], unit="m")
            raise StoreError(f"{self.store}: frames {when[0]} to {when[1]} cannot be read "
                             f"({err}); `metnet check {self.store}` names every damaged "
                             "frame") from None


def _settings(store: str | Path, lattice: PatchLattice, threshold: float,
              max_rate: float) -> dict[str, Any]:
    """What an index of ``store`` for these settings states besides the store's identity and
    ``frames``, as it reads back from JSON."""
    return json.loads(json.dumps({
        "metnet_sample_index_version": INDEX_VERSION,
        "store": store_location(store),
        "lattice": lattice.describe(),
        "threshold_mm_h": float(threshold),
        "max_rate_mm_h": float(max_rate),
    }))


def _attributes(view: _StoreView, lattice: PatchLattice, threshold: float,
                max_rate: float) -> dict[str, Any]:
    """The attributes an index of ``view`` for these settings has (``frames`` aside), as
    they read back from JSON."""
    identity = json.loads(json.dumps(view.identity))
    return {**_settings(view.store, lattice, threshold, max_rate), "identity": identity}


def _file_name(store: str | Path, settings: dict[str, Any]) -> str:
    """``<store name>.sample-index-<key>.zarr``, the key hashing the location and settings
    (:func:`_settings`)."""
    settings = {k: settings[k] for k in ("metnet_sample_index_version", "store", "lattice",
                                         "threshold_mm_h", "max_rate_mm_h")}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"{store_name(store)}.sample-index-{key}.zarr"


def _current(target: Path | zarr.Group, view: _StoreView, expected: dict[str, Any],
             progress: bool, note: Note, build: bool = True) -> zarr.Group | None:
    """The index at ``target`` (a folder, or an empty in-memory group) brought up to date
    with the store: extended by the frames it lacks; built anew when missing or made for
    another store or setting (or, with ``build`` false, removed then, returning None)."""
    group = target if isinstance(target, zarr.Group) else _open(target)
    name = store_name(view.store)
    settings = (f"context {expected['lattice']['context_size']} px, target "
                f"{expected['lattice']['target_size']} px, stride "
                f"{expected['lattice']['stride']} px, wet above "
                f"{expected['threshold_mm_h']:g} mm/h")
    if group is None or not _matches(group, expected, view.times):
        if isinstance(target, Path):
            remove(target)
        if not build:
            if group is not None:
                note(f"{name}: removed the sample index {target} (made for an earlier store "
                     "at this path)")
            return None
        where = f"into {target}" if isinstance(target, Path) else "in memory"
        note(f"{name}: no sample index for {settings}: reading its {len(view.times)} frames "
             f"once {where}")
        group = _create(target, expected, len(expected["lattice"]["rows"])
                        * len(expected["lattice"]["cols"]))
    elif group.attrs["frames"] < len(view.times):
        note(f"{name}: extending the sample index for {settings} by "
             f"{len(view.times) - group.attrs['frames']} new frames")
    _fill(group, view, PatchLattice.from_attributes(expected["lattice"]),
          expected["threshold_mm_h"], expected["max_rate_mm_h"], progress)
    return group


def _open(path: Path) -> zarr.Group | None:
    """The index group at ``path`` (writable), or None when missing or unreadable."""
    try:
        return zarr.open_group(path, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, OSError):
        return None


def _matches(group: zarr.Group, expected: dict[str, Any], times: np.ndarray) -> bool:
    """Whether ``group`` indexes the first of ``times`` for the expected store and settings,
    or all of them and later ones (ingest extended it since ``times`` were read)."""
    attrs = dict(group.attrs)
    committed = attrs.get("frames", -1)
    if any(attrs.get(k) != v for k, v in expected.items()) or committed < 0:
        return False
    shared = min(committed, len(times))
    try:
        indexed = group["time"][:shared]
    except (KeyError, ValueError, OSError):
        return False
    return bool(np.array_equal(indexed, times[:shared].astype(np.int64)))


def _create(target: Path | zarr.Group, expected: dict[str, Any], candidates: int) -> zarr.Group:
    """An empty index (no frames) with the expected attributes."""
    group = (target if isinstance(target, zarr.Group)
             else zarr.open_group(target, mode="w", zarr_format=3))
    chunk = int(np.clip(CHUNK_BYTES // (2 * max(candidates, 1)), 1, MAX_CHUNK_FRAMES))
    group.create_array("time", shape=(0,), chunks=(chunk,), dtype="int64")
    for name in ("wet", "cover"):
        group.create_array(name, shape=(0, candidates), chunks=(chunk, candidates),
                           dtype="float16")
    group.attrs.update({**expected, "frames": 0})
    return group


def _fill(group: zarr.Group, view: _StoreView, lattice: PatchLattice, threshold: float,
          max_rate: float, progress: bool) -> None:
    """Compute the rows of the frames ``group`` lacks, one chunk of frames at a time,
    committing each (raising ``frames``) once written."""
    start, n = int(group.attrs["frames"]), len(view.times)
    if start >= n:
        return
    time, wet, cover = group["time"], group["wet"], group["cover"]
    for array in (time, wet, cover):
        array.resize((n, *array.shape[1:]))
    chunk = wet.chunks[0]
    bar = tqdm(total=n - start, desc=f"sample index {store_name(view.store)}", unit="frame",
               disable=not progress)
    first = start
    while first < n:
        last = min((first // chunk + 1) * chunk, n)
        wet_rows = np.empty((last - first, len(lattice)), np.float16)
        cover_rows = np.empty_like(wet_rows)
        for a in range(first, last, READ_FRAMES):
            b = min(a + READ_FRAMES, last)
            wet_rows[a - first:b - first], cover_rows[a - first:b - first] = lattice.fractions(
                view.read(a, b), threshold, max_rate)
            bar.update(b - a)
        wet[first:last], cover[first:last] = wet_rows, cover_rows
        time[first:last] = view.times[first:last].astype(np.int64)
        group.attrs["frames"] = last
        first = last
    bar.close()


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
