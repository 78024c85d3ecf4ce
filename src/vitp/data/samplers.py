"""Samplers for distributed evaluation."""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import Dataset, DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Every image exactly once across ranks (rank r takes r, r + W, r + 2W, ...).

    ``DistributedSampler`` pads the dataset by repeating images so that all ranks get the same
    count, which would count those images twice in PQ / mIoU / AP. Metrics here are sums over
    images synchronised once per epoch, so uneven per-rank counts are harmless.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
