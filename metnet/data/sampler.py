"""The sampler: shuffles per epoch, shares samples out over DDP ranks, passes the epoch on.

It subclasses ``DistributedSampler``, so Lightning neither replaces nor wraps
it under DDP and calls its ``set_epoch`` every epoch. It yields
``(epoch, index)`` keys, so the epoch reaches the dataset inside every worker
process (a dataset attribute set in the main process would not).

With ``shuffle_block`` > 1, training shuffles blocks of that many consecutive samples
rather than single samples. Consecutive samples are the patches of one window, then
the next window, one step later, so a block's samples share most of their frames: a
lazy reader (:mod:`metnet.data.frames`) decodes each frame once per block instead of
once per sample, at the price of batches whose samples come from a shorter period.
A block longer than a batch is dealt to one DataLoader worker whole (the loader hands
batch k to worker k % workers), so the worker that decoded its frames serves all of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``(epoch, index)`` keys for this rank's share of ``dataset``.

    Training (``shuffle=True``) drops the last ``len % num_replicas`` samples of
    each epoch's permutation, so ranks get disjoint, equal shares (with
    ``shuffle_block`` > 1, each rank a contiguous part of the permutation of blocks, so
    blocks stay whole). Evaluation (``shuffle=False``) keeps every sample, in order;
    ranks get interleaved shares, padded with up to ``num_replicas - 1`` repeats to
    equal length.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_block: int = 1,
        batch_size: int = 1,
        workers: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=shuffle)
        if shuffle_block < 1:
            raise ValueError(f"shuffle_block={shuffle_block} must be >= 1")
        self.shuffle_block, self.batch_size, self.workers = shuffle_block, batch_size, workers
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """This epoch's keys, less the first :attr:`skip` (set when resuming mid-epoch)."""
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        if self.shuffle and self.shuffle_block > 1:
            indices = self._block_share()
        else:
            indices = list(super().__iter__())
        return ((epoch, index) for index in indices[skip:])

    def _block_share(self) -> list[int]:
        """This rank's part of this epoch's permutation of blocks of consecutive samples."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        block, n = self.shuffle_block, len(self.dataset)
        order = torch.randperm(-(-n // block), generator=generator).tolist()
        indices = [i for b in order for i in range(b * block, min((b + 1) * block, n))]
        first = self.rank * self.num_samples
        share = indices[first:first + self.num_samples]
        batches_per_block = -(-self.shuffle_block // self.batch_size)
        return deal(share, self.batch_size, batches_per_block, max(self.workers, 1))


def deal(keys: list[int], batch_size: int, run: int, lanes: int) -> list[int]:
    """``keys`` reordered so that a loader handing batch k to lane (worker) k % ``lanes``
    gives each lane ``run`` consecutive batches of ``keys`` in a row.

    Batches stay whole and in order within a lane; a last, partial batch stays last.
    """
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    last = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    dealt = []
    for start in range(0, len(batches), run * lanes):
        runs = [batches[start + lane * run:start + (lane + 1) * run] for lane in range(lanes)]
        dealt += [r[i] for i in range(run) for r in runs if i < len(r)]
    return [key for batch in dealt + last for key in batch]


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning checkpoints mid-epoch and resumes where it stopped.

    Lightning saves the ``state_dict`` of a loader that has one: here the epoch and the
    number of batches the training loop has taken. On resume the sampler skips those
    batches, so the run sees the rest of the epoch in the order it would have had.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochSampler = self.sampler
        resume, self._resume = self._resume, None
        self._taken = resume["batches"] if resume and resume["epoch"] == sampler.epoch else 0
        sampler.skip = self._taken * self.batch_size
        for batch in super().__iter__():
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": self._taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)
