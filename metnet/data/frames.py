"""Read access to one store's frames: held in memory, or read lazily from zarr.

``cache="memory"`` (default) reads the selected frames once and holds them
twice, as cleaned float32 rain rate and as float32 model input (the forward
transform, precomputed because it is the costliest step of a sample): 8
bytes per pixel per frame, so 288 frames of 512 x 512 take 0.6 GB and a year
of 5-minute FMI frames would take 780 GB. A sample is then a few slices.
``cache="lazy"`` reads frames from zarr when asked, for archives bigger
than memory: a store holds one chunk per frame, so a read decodes whole frames,
and the last ones decoded (with their model input, once asked for) stay in a
small least-recently-used cache of ``lazy_cache_mb`` per process. A batch whose
samples share frames (neighbouring windows, several patches per window: see
``shuffle_block`` of :class:`metnet.data.sampler.EpochSampler`) then decodes
each frame once. Both return identical values.

Zarr handles are opened on first use in each process (a forked worker reopens what its
parent opened: the handle of a store at a URL holds the parent's network session) and never
pickled, so a ``StoreFrames`` crosses into DataLoader workers safely.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr

from metnet.io.store import StoreError, open_group, open_store, rate_source, store_name
from metnet.transforms import clean_rate, rate_to_input_

Cache = Literal["memory", "lazy"]
LOAD_CHUNK_FRAMES = 32
#: Default memory for the decoded frames a lazy reader keeps, per process, in MB.
LAZY_CACHE_MB = 256
METRES_PER_UNIT = {"m": 1.0, "metre": 1.0, "meter": 1.0, "km": 1000.0}
#: Pixel sizes this close count as equal: national grids called "2 km" differ in the
#: fourth digit (FMI's is 1999.35 m).
PIXEL_SIZE_RTOL = 1e-3


def pixel_size(x: np.ndarray, units: str) -> tuple[float, str]:
    """Pixel size along ``x`` and its unit, converted to metres where the grid is metric."""
    size = abs(float(x[1] - x[0])) if len(x) > 1 else float("nan")
    if units in METRES_PER_UNIT:
        return size * METRES_PER_UNIT[units], "m"
    return size, units


class StoreFrames:
    """The frames of one store (a chosen subset of its times), cleaned of unphysical rates.

    Attributes:
        path: the store: a local path or a URL (:func:`metnet.io.store.open_store`).
        storage_options: the fsspec options of a URL's file system.
        name: its short name (the store folder's stem).
        times: (T,) datetime64[ns] times of the selected frames.
        x, y: (W,), (H,) pixel-centre coordinates in projection units.
        crs: PROJ string of the grid.
    """

    def __init__(
        self,
        path: str | Path,
        frames: np.ndarray | None = None,
        cache: Cache = "memory",
        max_rate: float = 200.0,
        storage_options: dict[str, Any] | None = None,
        lazy_cache_mb: float = LAZY_CACHE_MB,
    ) -> None:
        """Open ``path`` (raises ``StoreError``); keep store frames ``frames`` (None: all).

        ``lazy_cache_mb`` bounds the decoded frames a lazy reader keeps (per process).
        """
        if cache not in ("memory", "lazy"):
            raise ValueError(f"cache must be 'memory' or 'lazy', got {cache!r}")
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        self.name = store_name(self.path)
        ds = open_store(self.path, self.storage_options)
        self.rate_source = rate_source(ds)
        self.crs = str(ds.attrs["crs"])
        self.x, self.y = ds["x"].values, ds["y"].values
        all_times = ds["time"].values.astype("datetime64[ns]")
        self.index = np.arange(len(all_times)) if frames is None else np.asarray(frames)
        self.times = all_times[self.index]
        self.max_rate = max_rate
        self._array: zarr.Array | None = None
        self._array_pid = 0  # the process that opened _array
        self._data: np.ndarray | None = None
        self._input: np.ndarray | None = None
        self._recent = DecodedFrames(int(lazy_cache_mb * 2**20))
        if cache == "memory":
            self._data = self._load()
            self._input = np.empty_like(self._data)
            for first in range(0, len(self._data), LOAD_CHUNK_FRAMES):
                block = slice(first, first + LOAD_CHUNK_FRAMES)
                self._input[block] = self._data[block]
                rate_to_input_(torch.from_numpy(self._input[block]))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of a frame."""
        return len(self.y), len(self.x)

    def read(self, frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Rain rate (n, h, w) float32 in mm/h (NaN: not observed) of selected frames ``frames``.

        Args:
            frames: (n,) indices into :attr:`times`.
            rows, cols: pixel ranges (plain slices, step 1).
        """
        if self._data is not None:
            return self._data[frames, rows, cols]
        if not self._keeps(frames):
            return self._decode(frames, rows, cols)
        self._decode_missing(frames)
        return np.stack([self._recent.rate(frame)[rows, cols] for frame in frames])

    def read_input(self, frames: np.ndarray, rows: slice, cols: slice, out: np.ndarray) -> None:
        """Write model input (0 where not observed) into ``out[:, 0]``, observed mask into
        ``out[:, 1]``.

        Args:
            frames, rows, cols: as for :meth:`read`.
            out: (n, >= 2, h, w) float32; the input is
                :func:`metnet.transforms.rate_to_input_` of the rate, the mask 1 or 0.
        """
        if self._data is None and not self._keeps(frames):
            rate = self._decode(frames, rows, cols)
            out[:, 1] = ~np.isnan(rate)
            out[:, 0] = rate_to_input_(torch.from_numpy(rate)).numpy()
            return
        if self._data is None:
            self._decode_missing(frames)
            for k, frame in enumerate(frames):  # frame by frame: no temporary copies
                model_input, observed = self._recent.model_input(frame)
                np.copyto(out[k, 0], model_input[rows, cols])
                np.copyto(out[k, 1], observed[rows, cols])
            return
        for k, frame in enumerate(frames):
            np.copyto(out[k, 0], self._input[frame, rows, cols])
            np.logical_not(np.isnan(self._data[frame, rows, cols]), out=out[k, 1],
                           casting="unsafe")

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first, rates)`` for consecutive blocks of whole frames, first to last."""
        for first in range(0, len(self.times), LOAD_CHUNK_FRAMES):
            frames = np.arange(first, min(first + LOAD_CHUNK_FRAMES, len(self.times)))
            whole = slice(None)
            yield first, (self.read(frames, whole, whole) if self._data is not None
                          else self._decode(frames, whole, whole))

    def _keeps(self, frames: np.ndarray) -> bool:
        """Whether the decoded frames of ``frames`` (rate, input, mask) fit in the lazy cache."""
        height, width = self.shape
        return 3 * 4 * height * width * len(np.unique(frames)) <= self._recent.capacity

    def _decode_missing(self, frames: np.ndarray) -> None:
        """Decode, in one read, the whole frames of ``frames`` that are not kept yet (the
        others become the most recently used, so adding these does not drop them)."""
        missing: list[int] = []
        for frame in np.unique(frames):
            if frame in self._recent:
                self._recent.rate(int(frame))
            else:
                missing.append(int(frame))
        if missing:
            whole = slice(None)
            rates = self._decode(np.array(missing), whole, whole)
            for frame, rate in zip(missing, rates, strict=True):
                self._recent.add(frame, rate)

    def _decode(self, frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Rain rate (n, h, w) of ``frames`` decoded from zarr (see :meth:`read`)."""
        try:
            raw = self._zarr().get_orthogonal_selection((self.index[frames], rows, cols))
        except Exception as err:  # codecs raise anything from ValueError to RuntimeError
            when = ", ".join(np.datetime_as_string(self.times[frames], unit="m"))
            raise StoreError(f"{self.path}: frames at {when} cannot be read ({err}); "
                             f"`metnet check {self.path}` names every damaged frame") from None
        return clean_rate(self.rate_source.raw_to_rate(raw), self.max_rate)

    def _load(self) -> np.ndarray:
        data = np.empty((len(self.times), *self.shape), dtype=np.float32)
        for first, rates in self.iter_chunks():
            data[first:first + len(rates)] = rates
        return data

    def _zarr(self) -> zarr.Array:
        if self._array is None or self._array_pid != os.getpid():
            self._array_pid = os.getpid()
            group = open_group(self.path, self.storage_options)
            self._array = group[self.rate_source.variable]
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        state["_recent"] = DecodedFrames(self._recent.capacity)
        return state


class DecodedFrames:
    """The last whole frames decoded, least recently used dropped first, within a byte budget.

    Each holds its (H, W) float32 rain rate in mm/h and, once asked for, its model input
    (:func:`metnet.transforms.rate_to_input_`) and observed mask, computed once per frame
    rather than once per patch.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._bytes = 0

    def __contains__(self, frame: int) -> bool:
        return frame in self._frames

    def add(self, frame: int, rate: np.ndarray) -> None:
        """Keep ``rate`` (H, W) as frame ``frame``, dropping the least recently used."""
        self._frames[frame] = [np.ascontiguousarray(rate)]
        self._bytes += rate.nbytes
        self._shrink()

    def rate(self, frame: int) -> np.ndarray:
        """(H, W) rain rate of a kept frame (do not modify it)."""
        self._frames.move_to_end(frame)
        return self._frames[frame][0]

    def model_input(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) model input and observed mask (float32 1 or 0) of a kept frame, computed
        on first use (do not modify them)."""
        arrays = self._frames[frame]
        if len(arrays) == 1:
            arrays.append(rate_to_input_(torch.from_numpy(arrays[0].copy())).numpy())
            arrays.append((~np.isnan(arrays[0])).astype(np.float32))
            self._bytes += arrays[1].nbytes + arrays[2].nbytes
        self._frames.move_to_end(frame)
        return arrays[1], arrays[2]

    def _shrink(self) -> None:
        # the newest frame stays even alone over budget: a read needs it next
        while self._bytes > self.capacity and len(self._frames) > 1:
            _, arrays = self._frames.popitem(last=False)
            self._bytes -= sum(a.nbytes for a in arrays)
