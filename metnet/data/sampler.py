"""The sampler: shuffles per epoch, shares samples out over DDP ranks, passes the epoch on.

It subclasses ``DistributedSampler``, so Lightning neither replaces nor wraps
it under DDP and calls its ``set_epoch`` every epoch. It yields
``(epoch, index)`` keys, so the epoch reaches the dataset inside every worker
process (a dataset attribute set in the main process would not).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())
