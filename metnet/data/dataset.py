"""The sample: a context patch sequence and the rain at each lead time over its centre.

A batch is a dict (``dataset[i]`` gives one sample: the same without B, with
``init_time``, ``row`` and ``col`` as Python ints and ``store`` a str):

=============== ================= ======= ============================================
key             shape             dtype   content
=============== ================= ======= ============================================
``context``     (B, T, C, S, S)   float32 model input, channels in :func:`channel_names` order
``target``      (B, L, St, St)    float32 rain rate in mm/h, NaN where not observed
``target_mask`` (B, L, St, St)    bool    True where ``target`` is observed
``lead_inputs`` (B, L, Cl, S, S)  float32 with motion inputs only: per-lead channels over the
                                          context square (:mod:`metnet.data.motion`)
``lead_times``  (B, L)            int64   lead times in minutes after ``init_time``
``init_time``   (B,)              int64   time of the last context frame, ns since 1970 UTC
``store``       list of B str             the store's name (folder stem)
``row``/``col`` (B,)              int64   grid pixel of the context patch's top-left corner
=============== ================= ======= ============================================

T = ``context_frames``, S = ``context_size``, St = ``target_size``, L = number
of lead times; the target square is the central St x St of the context
square (offset ``(S - St) // 2``).

The context channels (rain, rain mask, satellites, lat/lon with ``static_channels``, time
of day and year with ``time_channels``) are written by
:meth:`metnet.data.inputs.ContextSources.fill`, the code forecasts build their input with.

Randomness: a training sample's patch (and, with ``augment``, the rotation or reflection
of the square it is seen under, :mod:`metnet.data.augment`) is drawn from a generator
seeded by ``(seed, split, epoch, index)``, never from shared state, so samples do not
depend on worker count or order; val/test samples ignore the epoch and are never
augmented, so they are the same set every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from metnet.data.augment import SYMMETRIES, transform_inplace
from metnet.data.frames import StoreFrames
from metnet.data.inputs import ContextSources, channel_names
from metnet.data.motion import MotionCache
from metnet.data.patches import PatchWeights
from metnet.data.windows import SPLITS, Windows
from metnet.models.lead_inputs import vector_channels


@dataclass(frozen=True)
class SampleSpec:
    """Shape of a sample and how it is drawn (lead times in minutes)."""

    context_frames: int
    context_size: int
    target_size: int
    lead_times: tuple[int, ...]
    static_channels: bool = False
    time_channels: bool = False
    rain_weight_eps: float = 0.1
    lead_channels: int = 0
    augment: bool = False


@dataclass(frozen=True)
class Pick:
    """One sample's place: store number, window number in that store, patch corner (pixels)
    and the symmetry of the square it is seen under (:mod:`metnet.data.augment`; 0: as is)."""

    store: int
    window: int
    row: int
    col: int
    symmetry: int = 0


@dataclass
class Domain:
    """One radar store with what its samples need: the sources of its context channels,
    patch weights, its lead times in minutes and per-lead inputs.

    A store with fewer lead times than the spec (one sampled at another step,
    :func:`metnet.data.windows.store_lead_times`) fills the first lead slots of a sample;
    the others repeat its last lead with an unobserved (NaN) target, so no loss or score
    sees them.
    """

    sources: ContextSources
    patches: PatchWeights
    lead_times: tuple[int, ...]
    motion: MotionCache | None = None

    def padded_leads(self, slots: int) -> tuple[int, ...]:
        """The lead times (minutes) of this store's samples, padded to ``slots``."""
        return self.lead_times + self.lead_times[-1:] * (slots - len(self.lead_times))

    @property
    def frames(self) -> StoreFrames:
        """The radar store's frames."""
        return self.sources.frames


class NowcastDataset(Dataset):
    """The samples of one split: every complete window of every store, times ``repeats``.

    Index ``i`` is window ``i // repeats``; windows are numbered store by
    store. ``dataset[(epoch, i)]`` draws the patch for that epoch (training);
    ``dataset[i]`` means epoch 0. A DataLoader fetches whole batches through
    :meth:`__getitems__` and needs ``collate_fn=collate``.
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        windows: Sequence[Windows],
        spec: SampleSpec,
        split: str,
        seed: int = 0,
        repeats: int = 1,
    ) -> None:
        self.domains, self.windows, self.spec = list(domains), list(windows), spec
        self.split_code = SPLITS.index(split)
        self.seed, self.repeats = seed, repeats
        self.offsets = np.cumsum([0] + [len(w) for w in self.windows])
        n_sat = len(self.domains[0].sources.satellites) if self.domains else 0
        self.channels = channel_names(n_sat, spec.static_channels, spec.time_channels)

    def __len__(self) -> int:
        return int(self.offsets[-1]) * self.repeats

    def locate(self, index: int) -> tuple[int, int]:
        """(store number, window number in that store) of sample ``index``."""
        window = index // self.repeats
        store = int(np.searchsorted(self.offsets, window, side="right")) - 1
        return store, window - int(self.offsets[store])

    def pick(self, key: int | tuple[int, int]) -> Pick:
        """Store, window and patch corner of sample ``key`` (``index`` or ``(epoch, index)``)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range 0..{len(self) - 1}")
        epoch = epoch if self.split_code == 0 else 0
        rng = np.random.default_rng([self.seed, self.split_code, epoch, index])
        store, number = self.locate(index)
        target_frames = self.windows[store].target[number]
        row, col = self.domains[store].patches.draw(target_frames, self.spec.rain_weight_eps, rng)
        augmented = self.spec.augment and self.split_code == 0
        return Pick(store, number, row, col, int(rng.integers(SYMMETRIES)) if augmented else 0)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> dict:
        """A whole batch (leading dimension B = len(keys)), written straight into its tensors.

        This is what the DataLoader calls; pair it with ``collate_fn=collate``.
        """
        picks = [self.pick(key) for key in keys]
        spec, size = self.spec, self.spec.target_size
        context = _empty((len(picks), spec.context_frames, len(self.channels),
                          spec.context_size, spec.context_size))
        target = _empty((len(picks), len(spec.lead_times), size, size))
        for out_context, out_target, pick in zip(context.numpy(), target.numpy(), picks,
                                                 strict=True):
            self._fill_context(out_context, pick)
            self._fill_target(out_target, pick)
            transform_inplace(out_context, pick.symmetry)
            transform_inplace(out_target, pick.symmetry)
        extra = {"lead_inputs": self._lead_inputs(picks)} if spec.lead_channels else {}
        return {
            "context": context,
            **extra,
            "target": target,
            "target_mask": torch.from_numpy(~np.isnan(target.numpy())),
            "lead_times": torch.tensor([self.domains[p.store].padded_leads(len(spec.lead_times))
                                        for p in picks], dtype=torch.int64),
            "init_time": torch.tensor([int(self.windows[p.store].init_time[p.window]
                                           .astype(np.int64)) for p in picks]),
            "store": [self.domains[p.store].frames.name for p in picks],
            "row": torch.tensor([p.row for p in picks], dtype=torch.int64),
            "col": torch.tensor([p.col for p in picks], dtype=torch.int64),
        }

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """One sample: the batch of one without its batch dimension (metadata as int / str)."""
        batch = self.__getitems__([key])
        sample = {name: value[0] for name, value in batch.items()}
        return {**sample, **{name: int(sample[name]) for name in ("init_time", "row", "col")}}

    def _fill_context(self, out: np.ndarray, pick: Pick) -> None:
        """Write the (T, C, S, S) float32 model input of ``pick`` into ``out``, as forecasts
        build theirs (:meth:`metnet.data.inputs.ContextSources.fill`)."""
        size = self.spec.context_size
        self.domains[pick.store].sources.fill(
            out, self.windows[pick.store].context[pick.window],
            slice(pick.row, pick.row + size), slice(pick.col, pick.col + size))

    def _lead_inputs(self, picks: Sequence[Pick]) -> torch.Tensor:
        """(B, L, Cl, S, S) per-lead inputs over each pick's context square."""
        spec, size = self.spec, self.spec.context_size
        out = _empty((len(picks), len(spec.lead_times), spec.lead_channels, size, size))
        vectors = vector_channels(spec.lead_channels)
        for out_pick, pick in zip(out.numpy(), picks, strict=True):
            init_frame = self.windows[pick.store].context[pick.window, -1]
            domain = self.domains[pick.store]
            filled = len(domain.lead_times)
            domain.motion.read(init_frame, slice(pick.row, pick.row + size),
                               slice(pick.col, pick.col + size), out_pick[:filled])
            out_pick[filled:] = out_pick[filled - 1]
            transform_inplace(out_pick, pick.symmetry, vectors)
        return out

    def _fill_target(self, out: np.ndarray, pick: Pick) -> None:
        """Write the (L, St, St) rain rate (mm/h, NaN: not observed) of ``pick`` into ``out``."""
        offset = (self.spec.context_size - self.spec.target_size) // 2
        top, left, size = pick.row + offset, pick.col + offset, self.spec.target_size
        frames = self.windows[pick.store].target[pick.window]
        out[:len(frames)] = self.domains[pick.store].frames.read(frames, slice(top, top + size),
                                                                 slice(left, left + size))
        out[len(frames):] = np.nan


def collate(batch: dict) -> dict:
    """The DataLoader's ``collate_fn``: batches come ready-made from ``__getitems__``."""
    return batch


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor for a batch.

    In a DataLoader worker it lives in shared memory, so the batch crosses to the main
    process without a copy (as torch's default_collate does). Elsewhere it is numpy
    memory: glibc reuses freed batch buffers, which spares the page faults of a fresh
    torch allocation (3x slower to fill on the development machine).
    """
    if get_worker_info() is None:
        return torch.from_numpy(np.empty(shape, dtype=np.float32))
    numel = int(np.prod(shape))
    storage = torch.empty(0)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0).new(storage).view(shape)
