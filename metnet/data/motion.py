"""Motion-informed per-lead inputs, and their cache per init time of a store.

What optical-flow extrapolation knows (where the rain moves) is given to the network as an
extra input per lead time, so that it only has to learn what extrapolation gets wrong
(growth, decay, smoothing of the uncertain future). The fields come from the extrapolation
nowcast method (:mod:`metnet.nowcasts.extrapolation`: Lucas-Kanade motion of the last 3
context frames, semi-Lagrangian advection of the last one, on the whole frame);
:func:`lead_input_channels` turns them into network input (channels named by
:func:`metnet.models.lead_inputs.lead_channel_names`).

:class:`MotionCache` computes them once per init time of a store and keeps them in a
sidecar zarr store (``<name>.motion-<key>.zarr`` in the store's cache folder,
:func:`metnet.io.store.cache_folder`: ``.metnet-cache`` beside a local store, a folder under
``~/.cache/metnet`` for a remote one), so training epochs never recompute optical flow. The
key hashes the store (:func:`metnet.io.store.store_fingerprint`), the time grid, the lead
times and the motion settings: changing any of them builds a new cache and removes the old
one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from metnet.atomic import atomic_write
from metnet.data.frames import StoreFrames
from metnet.io.store import cache_folder, store_fingerprint
from metnet.models.lead_inputs import ERROR_CHANNEL, lead_channel_names
from metnet.nowcasts import extrapolation
from metnet.nowcasts.extrapolation import (
    DB_THRESHOLD,
    DB_ZERO,
    MOTION_FRAMES,
    advect,
    motion_field,
)
from metnet.transforms import rate_to_input, rate_to_input_

#: Velocity input scale: pixels per context step divided by this is O(1).
VELOCITY_SCALE = 4.0
CACHE_VERSION = 1


def extrapolation_error(rate: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """The last step's extrapolation error (H, W) float32, in the input transform: the last
    frame of context rates (T >= 2, H, W) mm/h less the one before it advected one step by
    ``velocity`` (2, H, W) pixels per step; 0 where either is unknown."""
    extrapolated = advect(rate[-2], velocity, [1])[0]
    error = (rate_to_input(torch.from_numpy(rate[-1].astype(np.float32)))
             - rate_to_input(torch.from_numpy(extrapolated))).numpy()
    return np.nan_to_num(error, nan=0.0).astype(np.float32)


def lead_input_channels(extrapolated: np.ndarray, velocity: np.ndarray | None,
                        out: np.ndarray, error: np.ndarray | None = None) -> None:
    """Write the per-lead network input into ``out`` (L, C_lead, h, w) float32.

    Args:
        extrapolated: (L, h, w) mm/h, NaN where unknown.
        velocity: (2, h, w) pixels per step, or None (no motion channels).
        error: (h, w) :func:`extrapolation_error`, or None (no error channel).
    """
    out[:, 1] = np.isfinite(extrapolated)
    out[:, 0] = extrapolated
    rate_to_input_(torch.from_numpy(out[:, 0]))
    if error is not None:
        out[:, ERROR_CHANNEL] = error[None]
    if velocity is not None:
        out[:, -2:] = velocity[None] / VELOCITY_SCALE


def lead_planes(rate: np.ndarray, lead_steps: Sequence[float], velocity: bool,
                error: bool = False) -> np.ndarray:
    """Per-lead inputs (L, C_lead, H, W) float32 of context rates (T >= 3, H, W) mm/h over
    the whole frame, leads in context steps: what :class:`MotionCache` caches, computed
    directly (for forecasts)."""
    field = motion_field(rate)
    extrapolated = advect(rate[-1], field, lead_steps)
    out = np.empty((len(extrapolated), len(lead_channel_names(velocity, error)),
                    *rate.shape[1:]), np.float32)
    lead_input_channels(extrapolated, field if velocity else None, out,
                        extrapolation_error(rate, field) if error else None)
    return out


class MotionCache:
    """Extrapolated rain per lead (and motion) of every init frame of one store, cached.

    Args:
        frames: the store's frames on the step grid.
        contexts: (N, T >= 3) indices into ``frames.times`` of the context frames of each
            window (:attr:`metnet.data.windows.Windows.context`); the last is the init frame.
        context_stride: steps of the grid between context frames.
        lead_steps: (L,) lead times in steps of the grid.
        velocity: also keep the motion field.
        cache_dir: where the sidecar store goes (default and sub-folders:
            :func:`metnet.io.store.cache_folder`).
        memory: hold the cache in memory (float16) instead of reading it per sample.
        progress: progress bar while building.
        error: also keep the last step's :func:`extrapolation_error`.
        time_scale: the configuration's step over this store's (5/6 for a 6-minute store
            in a 5-minute configuration): the velocity channel is read in pixels per
            configured context step, whatever the store's step.
    """

    def __init__(
        self,
        frames: StoreFrames,
        contexts: np.ndarray,
        context_stride: int,
        lead_steps: np.ndarray,
        velocity: bool = False,
        cache_dir: str | Path | None = None,
        memory: bool = True,
        progress: bool = True,
        error: bool = False,
        time_scale: float = 1.0,
    ) -> None:
        self.frames, self.velocity, self.error = frames, velocity, error
        self.time_scale = float(time_scale)
        self.stride, self.lead_steps = int(context_stride), np.asarray(lead_steps, np.int64)
        contexts = np.asarray(contexts, np.int64).reshape(-1, np.shape(contexts)[-1])
        if contexts.shape[1] < MOTION_FRAMES:
            raise ValueError(f"motion inputs need context_frames >= {MOTION_FRAMES}")
        self.init_frames, first = np.unique(contexts[:, -1], return_index=True)
        self.motion_frames = contexts[first, -MOTION_FRAMES:]
        self.row_of = {int(f): k for k, f in enumerate(self.init_frames)}
        self.key = self._key()
        directory = cache_folder(frames.path, cache_dir)
        self.path = directory / f"{frames.name}.motion-{self.key}.zarr"
        if not self._complete():
            self._build(progress)
        group = zarr.open_group(self.path, mode="r")
        self._arrays = {name: group[name] for name in self._names()}
        self._memory = ({name: array[...].astype(np.float16) for name, array
                         in self._arrays.items()} if memory else None)

    def _key(self) -> str:
        """Hash of everything the cached fields depend on."""
        store = store_fingerprint(self.frames.path, self.frames.storage_options)
        settings = {
            "version": CACHE_VERSION, "store": store,
            "frames": self.frames.index.tolist(), "motion_frames": self.motion_frames.tolist(),
            "stride": self.stride, "leads": self.lead_steps.tolist(),
            "velocity": self.velocity, "max_rate": self.frames.max_rate,
            "motion": ["LK", MOTION_FRAMES, DB_THRESHOLD, DB_ZERO, extrapolation.MOTION_GRID],
            **({"packing": packing} if (packing := self.frames.rate_source.packing) else {}),
            **({"error": True} if self.error else {}),
        }
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def read(self, init_frame: int, rows: slice, cols: slice, out: np.ndarray) -> None:
        """Write the per-lead input of init frame ``init_frame`` over a patch into ``out``
        (L, C_lead, h, w) (see :func:`lead_input_channels`)."""
        k = self.row_of[int(init_frame)]
        source = self._memory if self._memory is not None else self._arrays
        extrapolated = np.asarray(source["extrapolated"][k, :, rows, cols], np.float32)
        velocity = (np.asarray(source["velocity"][k, :, rows, cols], np.float32)
                    * np.float32(self.time_scale) if self.velocity else None)
        error = np.asarray(source["error"][k, rows, cols], np.float32) if self.error else None
        lead_input_channels(extrapolated, velocity, out, error)

    def fields(self, init_frame: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Whole-frame (L, H, W) extrapolation (mm/h) and (2, H, W) motion (or None)."""
        k = self.row_of[int(init_frame)]
        velocity = self._arrays["velocity"][k] if self.velocity else None
        return self._arrays["extrapolated"][k], velocity

    def _names(self) -> list[str]:
        return (["extrapolated"] + (["velocity"] if self.velocity else [])
                + (["error"] if self.error else []))

    def _complete(self) -> bool:
        try:
            return bool(zarr.open_group(self.path, mode="r").attrs.get("complete", False))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            return False

    def _build(self, progress: bool) -> None:
        """Compute every init frame's fields into a temporary store, then rename it in place
        and remove this store's caches of other settings."""
        try:
            with atomic_write(self.path) as tmp:
                self._compute(zarr.open_group(tmp, mode="w"), progress)
                for old in self.path.parent.glob(f"{self.frames.name}.motion-*.zarr"):
                    if old != self.path:
                        shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another process (a DDP rank) finished the same cache first
            if not self._complete():
                raise

    def _compute(self, group: zarr.Group, progress: bool) -> None:
        """Write the extrapolated fields (and motion) of every init frame into ``group``."""
        height, width = self.frames.shape
        n, num_leads = len(self.init_frames), len(self.lead_steps)
        extrapolated = group.create_array("extrapolated", shape=(n, num_leads, height, width),
                                          chunks=(1, num_leads, height, width),
                                          dtype="float32", fill_value=np.nan)
        velocity = (group.create_array("velocity", shape=(n, 2, height, width),
                                       chunks=(1, 2, height, width), dtype="float32")
                    if self.velocity else None)
        error = (group.create_array("error", shape=(n, height, width),
                                    chunks=(1, height, width), dtype="float32")
                 if self.error else None)
        leads = self.lead_steps / self.stride  # in context steps, the motion's unit
        for k, used in enumerate(tqdm(self.motion_frames, desc=f"motion {self.frames.name}",
                                      unit="init", disable=not progress)):
            rate = self.frames.read(used, slice(None), slice(None))
            field = motion_field(rate)
            extrapolated[k] = advect(rate[-1], field, leads)
            if velocity is not None:
                velocity[k] = field
            if error is not None:
                error[k] = extrapolation_error(rate, field)
        group.attrs.update({"complete": True, "key": self.key, "store": str(self.frames.path)})
