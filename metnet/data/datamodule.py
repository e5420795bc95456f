"""``NowcastDataModule``: radar (and satellite) stores -> train/val/test batches.

Configured with simple types for LightningCLI, e.g.::

    metnet fit --data.stores '[fmi.zarr,knmi.zarr]' --data.batch_size 16

What it does (details in the modules it composes):

* each store's frames are put on the ``step_minutes`` grid
  (:func:`metnet.data.windows.grid_frames`: a 2-minute store gives every 5th
  frame for a 10-minute step). A store whose step does not divide ``step_minutes``
  (6 or 15 minutes in a 5-minute configuration) is sampled at the shortest multiple of its
  own step instead (:func:`metnet.data.windows.sampling_step`), with the lead times
  rounded to it (6, 12, ..., 60 min; :func:`metnet.data.windows.store_lead_times`), its
  samples padded to the configured lead slots with unobserved targets, and its windows
  only train: one model learns from every archive, and is scored at its own leads;
* complete windows (every context and lead frame present) are found per store;
  windows never span two stores (:mod:`metnet.data.windows`);
* windows are split by time per store (``split_fractions`` of each store's
  frames, or explicit ``split_times``); a window belongs to a split only if its
  whole footprint does, so splits never share a frame;
* training patches are drawn rain-weighted with a fresh seeded generator per
  (seed, epoch, index); val/test patches are the same on every call
  (:mod:`metnet.data.patches`, :mod:`metnet.data.dataset`); the rain statistics come from
  each store's sample index, built on first use and extended as the store grows
  (:mod:`metnet.io.sample_index`), so rain weighting needs no read of the frames;
* samples are dicts described in :mod:`metnet.data.dataset`; the context has
  :attr:`NowcastDataModule.num_channels` channels, named by
  :attr:`NowcastDataModule.channel_names`.

Stores must share one pixel size (re-ingest with ``--coarsen`` to match them).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader

from metnet.data.alignment import Interpolation
from metnet.data.dataset import Domain, NowcastDataset, SampleSpec, collate
from metnet.data.frames import PIXEL_SIZE_RTOL, Cache, StoreFrames, pixel_size
from metnet.data.inputs import SourceSettings, channel_names
from metnet.data.motion import MOTION_FRAMES, MotionCache
from metnet.data.patches import PatchWeights
from metnet.data.sampler import EpochSampler, ResumableDataLoader
from metnet.data.windows import (
    SPLITS,
    DataConfigError,
    Windows,
    complete_windows,
    grid_frames,
    lead_steps,
    parse_split_ranges,
    split_bounds,
    split_windows,
    store_sampling,
    training_only,
    windows_in_ranges,
)
from metnet.io.sample_index import PatchLattice, sample_fractions
from metnet.io.store import is_remote, open_store, store_name
from metnet.models.lead_inputs import lead_channel_names

Split = Literal["train", "val", "test"]
#: Batches per shuffled block of neighbouring samples, by default with ``cache: lazy``.
LAZY_BATCHES_PER_BLOCK = 4
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train",),
}


class StorePlan(NamedTuple):
    """How a store is sampled, found without reading its frames: its frames on its step
    grid, its pixel size (and unit), the step and the lead times (minutes) of its windows
    (:func:`~metnet.data.windows.store_sampling`)."""

    keep: np.ndarray
    pixel_size: tuple[float, str]
    step: int
    lead_times: tuple[int, ...]


class NowcastDataModule(L.LightningDataModule):
    """Batches of (context, target) samples from radar stores, optionally with satellite.

    Args:
        stores: radar stores: zarr paths, or URLs fsspec opens (``https://``, ``s3://``,
            ``gs://``); a run may train on several domains.
        context_frames: frames of context T, ending at the init time.
        context_size: side S of the square context patch, pixels.
        target_size: side St of the central target square, pixels.
        lead_times: lead times in minutes, multiples of ``step_minutes``
            (default: every step up to 60 min).
        step_minutes: the time grid: lead times and context steps are multiples of it.
        context_step_minutes: time between context frames (default ``step_minutes``; MetNet
            used 15-minute context with 2-minute leads).
        satellite_stores: extra stores resampled onto each radar grid, two channels each.
        satellite_tolerance_minutes: the oldest satellite frame a radar frame may take.
        satellite_interpolation: ``nearest`` or ``bilinear``.
        static_channels: add latitude and longitude planes.
        time_channels: add sin/cos of time of day and of day of year.
        motion_inputs: add, per lead time, the field extrapolated to that lead by pysteps
            (Lucas-Kanade motion of the last 3 context frames, semi-Lagrangian advection of
            the last one) over the context square, as ``lead_inputs``
            (:mod:`metnet.data.motion`; cached per init time in a sidecar store).
        motion_velocity: with ``motion_inputs``, add the motion field (2 channels) as well.
        motion_error: with ``motion_inputs``, add the last context step's extrapolation
            error (:func:`metnet.data.motion.extrapolation_error`), from which the prior's
            error ensemble is drawn (the network's ``prior_error``).
        cache_dir: where what is derived from the stores (sample indexes, motion caches) goes
            (default: ``.metnet-cache`` beside a local store, ``~/.cache/metnet/<URL>`` for a
            remote one; :func:`metnet.io.store.cache_folder`).
        motion_cache_dir: the former name of ``cache_dir`` (deprecated).
        storage_options: fsspec options of the stores' file systems, for URLs (e.g.
            ``{anon: true, endpoint_url: https://...}`` for a public bucket of a non-AWS
            object store); credentials otherwise come from the usual places.
        augment: show each training sample under one of the eight rotations and reflections
            of the square, drawn per sample and epoch (:mod:`metnet.data.augment`); motion
            vectors turn with the field. Validation and test samples are never augmented.
        split_fractions: (train, val, test) shares of each store's frames, in time order.
        split_times: ``[val_start, test_start]`` ISO UTC times; overrides the fractions.
        splits: date ranges per split, overriding both, as multi-year archives are split:
            ``{train: [[2018-01-01, 2022-01-01]], val: [[2022-01-01, 2023-01-01]], test:
            [[2023-01-01, 2024-01-01]]}`` (each ``[start, end)``, several per split allowed,
            times in no range unused; a window belongs to a split when its whole footprint
            lies in one of its ranges).
        train_fraction: train on the earliest share (0, 1] of each store's training windows
            only, validation and test unchanged (for learning curves).
        patches_per_window: training samples per window per epoch.
        eval_patches_per_window: fixed val/test samples per window.
        patch_stride: lattice of candidate patch corners, pixels (default ``target_size // 4``).
        rain_threshold: rate (mm/h) above which a pixel counts as wet for patch weights.
        rain_weight_eps: weight of a dry observed target relative to a wet one.
        max_rate: rates above this (mm/h) are unphysical and become NaN.
        cache: ``memory`` (read every frame once at setup) or ``lazy`` (read per batch; setup
            then reads only the stores' coordinates and sample indexes).
        lazy_cache_mb: with ``cache: lazy``, memory for the last decoded frames, per loader
            process, in MB (:mod:`metnet.data.frames`).
        shuffle_block: training shuffles blocks of this many consecutive samples (a window's
            patches, then the next windows in time), so that a batch decodes few frames
            (:mod:`metnet.data.sampler`); default 4 batches with ``cache: lazy``, 1 (every
            sample shuffled on its own) with ``cache: memory``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches (for GPU training).
        seed: seeds the training shuffle and patch draws, and the fixed val/test patches.
    """

    def __init__(
        self,
        stores: list[str],
        context_frames: int = 7,
        context_size: int = 256,
        target_size: int = 64,
        lead_times: list[int] | None = None,
        step_minutes: int = 5,
        context_step_minutes: int | None = None,
        satellite_stores: list[str] | None = None,
        satellite_tolerance_minutes: int = SourceSettings.satellite_tolerance_minutes,
        satellite_interpolation: Interpolation = SourceSettings.satellite_interpolation,
        static_channels: bool = False,
        time_channels: bool = False,
        motion_inputs: bool = False,
        motion_velocity: bool = False,
        motion_error: bool = False,
        cache_dir: str | None = None,
        motion_cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        augment: bool = False,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        split_times: list[str] | None = None,
        splits: dict[str, list[list[str]]] | None = None,
        train_fraction: float = 1.0,
        patches_per_window: int = 1,
        eval_patches_per_window: int = 1,
        patch_stride: int | None = None,
        rain_threshold: float = 0.2,
        rain_weight_eps: float = 0.1,
        max_rate: float = SourceSettings.max_rate,
        cache: Cache = "memory",
        lazy_cache_mb: float = SourceSettings.lazy_cache_mb,
        shuffle_block: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # storage_options may hold credentials: kept out of checkpoints and hparams.yaml
        self.save_hyperparameters(ignore=["storage_options"])
        #: fsspec options of the stores' file systems (not a hyperparameter).
        self.storage_options = dict(storage_options or {})
        #: How the stores are read and the context channels built (as for forecasts).
        self.sources = SourceSettings.of(self.hparams)
        if lead_times is None:
            lead_times = list(range(step_minutes, 61, step_minutes))
        _check_config(stores, context_frames, context_size, target_size, step_minutes,
                      patches_per_window, eval_patches_per_window, batch_size, cache,
                      shuffle_block)
        self.split_ranges = parse_split_ranges(splits) if splits else None
        if not 0 < train_fraction <= 1:
            raise DataConfigError(f"train_fraction={train_fraction} must be in (0, 1]")
        extras = [name for name, on in (("motion_velocity", motion_velocity),
                                        ("motion_error", motion_error)) if on]
        if extras and not motion_inputs:
            verb = "adds" if len(extras) == 1 else "add"
            raise DataConfigError(f"{' and '.join(extras)} {verb} channels to motion_inputs, "
                                  "which is off: set motion_inputs: true, or drop them")
        if motion_inputs and context_frames < MOTION_FRAMES:
            raise DataConfigError(f"motion_inputs needs context_frames >= {MOTION_FRAMES} "
                                  f"(the motion is estimated from them), got {context_frames}")
        lead_steps(lead_times, step_minutes)  # refuses leads off the step grid
        context_step = context_step_minutes or step_minutes
        if context_step % step_minutes != 0:
            raise DataConfigError(f"context_step_minutes={context_step} is not a multiple of "
                                  f"step_minutes={step_minutes}")
        self.context_stride = context_step // step_minutes
        if motion_cache_dir is not None:
            if cache_dir is not None:
                raise DataConfigError("data.motion_cache_dir is the former name of "
                                      "data.cache_dir: give only data.cache_dir")
            # a FutureWarning: Python and jsonargparse show it (a DeprecationWarning is hidden)
            warnings.warn("data.motion_cache_dir is deprecated and will be removed: use "
                          "data.cache_dir", FutureWarning, stacklevel=2)
        self.cache_dir = cache_dir or motion_cache_dir
        self.stores = [str(s) for s in stores]
        self.satellite_stores = [str(s) for s in satellite_stores or []]
        self.spec = SampleSpec(context_frames, context_size, target_size,
                               tuple(int(t) for t in lead_times), static_channels,
                               time_channels, rain_weight_eps, len(self.lead_channel_names),
                               augment)
        self.patch_stride = patch_stride or max(target_size // 4, 1)
        self.datasets: dict[str, NowcastDataset] | None = None
        #: The stores sampled at another step than ``step_minutes`` (they only train).
        self.other_step_stores: list[str] = []
        #: The stores' pixel size and its unit (metres where metric), once set up.
        self.pixel_size: tuple[float, str] | None = None

    @property
    def channel_names(self) -> list[str]:
        """Names of the context channels, in order."""
        return channel_names(len(self.satellite_stores), self.spec.static_channels,
                             self.spec.time_channels)

    @property
    def num_channels(self) -> int:
        """C, the channels per context frame."""
        return len(self.channel_names)

    @property
    def lead_channel_names(self) -> list[str]:
        """Names of the per-lead input channels (empty without ``motion_inputs``)."""
        if not self.hparams.motion_inputs:
            return []
        return lead_channel_names(self.hparams.motion_velocity, self.hparams.motion_error)

    @property
    def store_names(self) -> list[str]:
        """The stores' short names (:func:`metnet.io.store.store_name`), as batches name
        them in ``store``."""
        return [store_name(path) for path in self.stores]

    @property
    def num_lead_channels(self) -> int:
        """Cl, the per-lead input channels (0 without ``motion_inputs``)."""
        return len(self.lead_channel_names)

    def setup(self, stage: str | None = None) -> None:
        """Open the stores and index the windows (once); check the stage's splits are not empty."""
        if self.datasets is None:
            self.datasets = self._build()
        for split in STAGE_SPLITS.get(stage, ("train",)):
            if len(self.datasets[split]) == 0:
                raise DataConfigError(
                    f"no complete window in the {split} split of {', '.join(self.stores)} "
                    f"(needs {self.spec.context_frames} context frames + "
                    f"{max(self.spec.lead_times)} min of leads inside the split; "
                    "change split_fractions, split_times or splits"
                    + (f"; {', '.join(self.other_step_stores)} only train, as their step "
                       "differs from step_minutes" if split != "train" and
                       self.other_step_stores else "") + ")"
                )

    def dataloader(self, split: Split, num_replicas: int | None = None,
                   rank: int | None = None) -> DataLoader:
        """A DataLoader over ``split``: this rank's share (rank/world size from the trainer,
        else from torch.distributed, else 1 replica) unless given."""
        if self.datasets is None:
            self.setup()
        default_replicas, default_rank = self._ranks()
        sampler = EpochSampler(
            self.datasets[split],
            num_replicas=default_replicas if num_replicas is None else num_replicas,
            rank=default_rank if rank is None else rank,
            shuffle=split == "train",
            seed=self.hparams.seed,
            shuffle_block=self.shuffle_block,
            batch_size=self.hparams.batch_size,
            workers=self.hparams.num_workers,
        )
        workers = self.hparams.num_workers
        loader = ResumableDataLoader if split == "train" else DataLoader
        return loader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory,
        )

    @property
    def shuffle_block(self) -> int:
        """Consecutive samples shuffled together in training (see ``shuffle_block``)."""
        hp = self.hparams
        if hp.shuffle_block is not None:
            return hp.shuffle_block
        return LAZY_BATCHES_PER_BLOCK * hp.batch_size if hp.cache == "lazy" else 1

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _build(self) -> dict[str, NowcastDataset]:
        hp = self.hparams
        plans = [self._plan(path) for path in self.stores]
        _check_pixel_sizes(self.stores, [plan.pixel_size for plan in plans])
        self.pixel_size = plans[0].pixel_size
        satellites = self.open_satellites()
        domains = [self._domain(path, plan, satellites)
                   for path, plan in zip(self.stores, plans, strict=True)]
        per_split: dict[str, list[Windows]] = {split: [] for split in SPLITS}
        for domain, step in zip(domains, (plan.step for plan in plans), strict=True):
            times = domain.frames.times
            leads = np.asarray(domain.lead_times) // step
            windows = complete_windows(times, step, self.spec.context_frames, leads,
                                       self.context_stride)
            if hp.motion_inputs and len(windows):
                domain.motion = MotionCache(domain.frames, windows.context, self.context_stride,
                                            leads, hp.motion_velocity, self.cache_dir,
                                            memory=hp.cache == "memory",
                                            error=hp.motion_error,
                                            time_scale=hp.step_minutes / step)
            if step != hp.step_minutes:
                parts = training_only(windows)
                self.other_step_stores.append(domain.frames.name)
                _note(f"{domain.frames.name}: sampled every {step} min (its step does not "
                      f"divide step_minutes={hp.step_minutes}), leads "
                      f"{', '.join(map(str, domain.lead_times))} min; its "
                      f"{len(windows)} windows only train")
            elif self.split_ranges is not None:
                parts = {split: windows_in_ranges(windows, times, self.split_ranges.get(split, []))
                         for split in SPLITS}
            else:
                parts = split_windows(windows, times,
                                      split_bounds(times, hp.split_fractions, hp.split_times))
            for split, selected in parts.items():
                if split == "train" and hp.train_fraction < 1:
                    first = np.arange(len(selected)) < np.ceil(hp.train_fraction * len(selected))
                    selected = selected.select(first)
                per_split[split].append(selected)
        return {
            split: NowcastDataset(
                domains, per_split[split], self.spec, split, hp.seed,
                hp.patches_per_window if split == "train" else hp.eval_patches_per_window,
            )
            for split in SPLITS
        }

    def _plan(self, path: str) -> StorePlan:
        """Check a store without reading its frames, and say how it is sampled."""
        if not is_remote(path) and not Path(path).exists():
            raise DataConfigError(f"{path}: no such store")
        ds = open_store(path, self.storage_options)
        height, width = ds.sizes["y"], ds.sizes["x"]
        if self.spec.context_size > min(height, width):
            raise DataConfigError(f"{path}: context_size={self.spec.context_size} is larger "
                                  f"than its {height} x {width} grid")
        store_step = int(ds.attrs["step_minutes"])
        step, leads = store_sampling(store_step, self.hparams.step_minutes,
                                     self.spec.lead_times, path)
        keep = grid_frames(ds["time"].values.astype("datetime64[ns]"), store_step, step, path)
        size = pixel_size(ds["x"].values, str(ds["x"].attrs.get("units", "m")))
        return StorePlan(keep, size, step, tuple(int(t) for t in leads))

    def open_satellites(self) -> list[StoreFrames]:
        """The frames of every satellite store, in ``satellite_stores`` order."""
        return [self.sources.open_frames(path, storage_options=self.storage_options)
                for path in self.satellite_stores]

    def _domain(self, path: str, plan: StorePlan, satellites: list[StoreFrames]) -> Domain:
        hp = self.hparams
        frames = self.sources.open_frames(path, plan.keep, self.storage_options)
        lattice = PatchLattice(*frames.shape, self.spec.context_size, self.spec.target_size,
                               self.patch_stride)
        wet, cover = sample_fractions(path, lattice, hp.rain_threshold, hp.max_rate, plan.keep,
                                      self.storage_options, self.cache_dir, note=_note)
        patches = PatchWeights(lattice, wet, cover)
        return Domain(self.sources.context_sources(frames, satellites), patches,
                      plan.lead_times)


def _note(line: str) -> None:
    """Print a one-line note of the data setup on stderr."""
    print(f"note: {line}", file=sys.stderr)


def _check_config(
    stores: list[str], context_frames: int, context_size: int, target_size: int,
    step_minutes: int, patches_per_window: int, eval_patches_per_window: int,
    batch_size: int, cache: str, shuffle_block: int | None,
) -> None:
    """Raise :class:`DataConfigError` naming the first bad argument."""
    problems = [
        (not stores, "stores is empty: give at least one radar store"),
        (context_frames < 1, f"context_frames={context_frames} must be >= 1"),
        (step_minutes < 1, f"step_minutes={step_minutes} must be >= 1"),
        (target_size < 1 or target_size > context_size,
         f"target_size={target_size} must be between 1 and context_size={context_size}"),
        (min(patches_per_window, eval_patches_per_window) < 1,
         "patches_per_window and eval_patches_per_window must be >= 1"),
        (batch_size < 1, f"batch_size={batch_size} must be >= 1"),
        (shuffle_block is not None and shuffle_block < 1,
         f"shuffle_block={shuffle_block} must be >= 1"),
        (cache not in ("memory", "lazy"), f"cache={cache!r} must be 'memory' or 'lazy'"),
    ]
    for bad, message in problems:
        if bad:
            raise DataConfigError(message)


def _check_pixel_sizes(paths: list[str], sizes: list[tuple[float, str]]) -> None:
    """Refuse stores with different pixel sizes (or units)."""
    ref_size, ref_unit = sizes[0]
    for path, (size, unit) in zip(paths[1:], sizes[1:], strict=True):
        if unit != ref_unit or not np.isclose(size, ref_size, rtol=PIXEL_SIZE_RTOL):
            raise DataConfigError(
                f"stores have different pixel sizes: {paths[0]} {ref_size:g} {ref_unit}, "
                f"{path} {size:g} {unit}; re-ingest with --coarsen so they match"
            )
