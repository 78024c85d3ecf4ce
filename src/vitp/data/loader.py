"""Loaders whose randomness depends only on (seed, epoch, sample), resumable mid-epoch, and bad-sample
handling (``on_bad_sample``).

Why: a training run killed and resumed from a checkpoint must see exactly the batches, augmentations
and points that the uninterrupted run saw. Drawing them from torch's global RNG (``RandomSampler``
without a generator, transforms and point samplers on the global stream) makes them depend on how
many epochs, validation passes and loader restarts happened *in this process*, so a resumed run
diverges from the first resumed batch on. Here:

* :class:`EpochSampler` orders the training set by ``randperm`` seeded with ``(seed, epoch)`` and
  gives each sample its own seed ``(seed, epoch, index)``; under DDP rank ``r`` takes positions
  ``r, r + W, ...`` of that order, so a global batch of ``W x b`` images is the single-process batch
  of ``W * b`` images (same images, same augmentation, same points).
* :class:`SampleReader` reads a sample with torch's RNG seeded by that seed (the transforms draw
  from it) and stores the seed on the sample (the collate seeds the point sampler with it).
* :class:`VitpDataLoader` tags each training batch with its position in the epoch, which the data
  module records for the batch being trained and keeps in checkpoints, and starts its iterator
  lazily, at the first batch, after Lightning has called ``set_epoch``: a checkpoint saved
  mid-epoch (``ModelCheckpoint(every_n_train_steps=N)``) resumes at the next batch of the same
  order.

``on_bad_sample="skip"``: a sample whose files cannot be read or do not agree with the annotations
(any :class:`vitp.data.io.DatasetError`) is replaced by a :class:`SkippedSample`; the collate drops
it and the loader (in the main process, so counting works with worker processes) warns with the
file and the problem and counts it in ``SegmentationDataModule.skipped_samples[stage]``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vitp.data.io import DatasetError, check_on_bad_sample

OnBadSample = Literal["error", "skip"]


def mix_seed(*values: Any) -> int:
    """A 63-bit seed from integers / strings, stable across processes, runs and machines."""
    text = ",".join(repr(v) for v in values).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def run_seed(seed: int | None = None) -> int:
    """``seed``, else the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


@dataclass
class SkippedSample:
    """Stands for a sample that could not be read (``on_bad_sample="skip"``)."""

    index: Any
    message: str


class SampleReader(Dataset):
    """Wraps a dataset of ``Sample``s for a loader.

    Keys are indices or ``(index, seed)`` pairs (:class:`EpochSampler`); with a seed, the sample is
    read under torch's RNG seeded with it (the caller's RNG state is restored) and ``sample.seed`` is
    set. ``on_bad_sample="skip"`` turns a :class:`DatasetError` into a :class:`SkippedSample`.
    """

    def __init__(self, dataset: Dataset, on_bad_sample: OnBadSample = "error") -> None:
        self.dataset = dataset
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # read_image, dataset_info ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            if seed is None:
                return self.dataset[index]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                sample = self.dataset[index]
            sample.seed = seed
            return sample
        except DatasetError as e:
            if self.on_bad_sample == "error":
                raise
            return SkippedSample(index, str(e))


class EpochSampler(DistributedSampler):
    """Training order from ``(seed, epoch)`` only; yields ``(index, sample_seed)``.

    A ``DistributedSampler`` (Lightning keeps it under DDP instead of wrapping it): rank ``r`` of
    ``W`` takes positions ``r::W`` of the order, padded by repeating its start as
    ``DistributedSampler`` does. ``skip`` samples of this rank are left out of the next iteration
    (mid-epoch resume; set by :class:`VitpDataLoader`).
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.skip = 0

    def order(self) -> list[int]:
        """This rank's indices of the current epoch (before ``skip``)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed("order", self.seed, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.total_size > n and n:
            order = (order * (self.total_size // n + 1))[: self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0
        for index in self.order()[skip:]:
            yield index, mix_seed("sample", self.seed, self.epoch, index)


class VitpDataLoader(DataLoader):
    """``DataLoader`` that is resumable mid-epoch (Lightning's stateful-loader interface), creates its
    iterator at the first batch (after ``set_epoch``), and reports skipped samples.

    Where to resume: ``resume()`` when given and it returns a position, else the state loaded by
    ``load_state_dict``. A position is ``{"epoch": e, "batches": n}``: ``n`` batches of epoch ``e``
    drawn from the iterator (dropped all-skipped batches included); a position of another epoch
    resumes nothing. Each batch carries its position (``batch.train_position``, with an
    :class:`EpochSampler` only); the data module records it when Lightning hands the batch to
    training and keeps it in the checkpoint (``SegmentationDataModule.state_dict``), which is what
    ``resume()`` returns after a restart. This loader's own ``state_dict`` cannot serve: it counts
    batches drawn, one ahead of training (Lightning prefetches a batch), and Lightning loads a
    loader's state only when it builds the loader after restoring the checkpoint, whereas
    ``configure_optimizers`` asking for ``trainer.estimated_stepping_batches`` builds it before
    (Lightning 2.6). It is kept for direct use and so that Lightning treats the loader as resumable.

    Args (besides ``DataLoader``'s):
        on_skipped: called in the main process with the messages of the samples a batch skipped.
        resume: called when the epoch's iterator starts; returns the position to resume at (and
            forgets it), or None.
    """

    def __init__(self, *args: Any, on_skipped: Callable[[list[str]], None] | None = None,
                 resume: Callable[[], dict[str, int] | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_skipped = on_skipped
        self.resume = resume
        self._consumed = 0  # batches taken from the current epoch's iterator
        self._epoch = 0
        self._resume: dict[str, int] | None = None

    def _epoch_sampler(self) -> EpochSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, EpochSampler) else None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Any]:
        return _LazyIterator(self)


class _LazyIterator:
    def __init__(self, loader: VitpDataLoader) -> None:
        self.loader = loader
        self.it: Iterator[Any] | None = None

    def __iter__(self) -> "_LazyIterator":
        return self

    def _start(self) -> Iterator[Any]:
        loader = self.loader
        sampler = loader._epoch_sampler()
        epoch = sampler.epoch if sampler is not None else 0
        skip = 0
        if sampler is not None:
            position = loader.resume() if loader.resume is not None else None
            position = position if position is not None else loader._resume
            if position is not None and int(position["epoch"]) == epoch:
                skip = int(position["batches"])
            sampler.skip = skip * int(loader.batch_size or 1)
        loader._resume = None
        loader._epoch, loader._consumed = epoch, skip
        return DataLoader.__iter__(loader)

    def __next__(self) -> Any:
        if self.it is None:
            self.it = self._start()
        while True:
            batch = next(self.it)
            self.loader._consumed += 1
            skipped = batch.skipped
            if skipped:
                if self.loader.on_skipped is not None:
                    self.loader.on_skipped(list(skipped))
            if not isinstance(batch, AllSkipped):
                if self.loader._epoch_sampler() is not None:  # read by the data module (resume)
                    batch.train_position = {"epoch": self.loader._epoch, "batches": self.loader._consumed}
                return batch


class AllSkipped:
    """What the collate returns when every sample of a batch was skipped (the loader drops it)."""

    def __init__(self, skipped: list[str]) -> None:
        self.skipped = skipped

    def __len__(self) -> int:
        return 0


def skipped_warning(messages: list[str], stage: str) -> None:
    for m in messages:
        warnings.warn(f"on_bad_sample=skip: skipped a {stage} sample: {m}", RuntimeWarning, stacklevel=3)
