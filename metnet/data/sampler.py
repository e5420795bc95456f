"""The sampler: shuffles per epoch, shares samples out over DDP ranks, passes the epoch on.

It subclasses ``DistributedSampler``, so Lightning neither replaces nor wraps
it under DDP and calls its ``set_epoch`` every epoch. It yields
``(epoch, index)`` keys, so the epoch reaches the dataset inside every worker
process (a dataset attribute set in the main process would not).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``(epoch, index)`` keys for this rank's share of ``dataset``.

    Training (``shuffle=True``) drops the last ``len % num_replicas`` samples of
    each epoch's permutation, so ranks get disjoint, equal shares. Evaluation
    (``shuffle=False``) keeps every sample, in order; ranks get interleaved
    shares, padded with up to ``num_replicas - 1`` repeats to equal length.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=shuffle)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """This epoch's keys, less the first :attr:`skip` (set when resuming mid-epoch)."""
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        return ((epoch, index) for index in list(super().__iter__())[skip:])


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
