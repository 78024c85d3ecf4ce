"""Collate dataset samples into :class:`vitp.structures.Batch`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from vitp.data.loader import AllSkipped, SkippedSample, mix_seed
from vitp.points import PointSampler
from vitp.structures import Batch, Target


@dataclass
class Sample:
    """One transformed image as a dataset returns it (before padding).

    image: ``float[3, h, w]`` normalised, unpadded; ``(h, w)`` becomes ``Target.valid_size``.
    masks: ``bool[N, h, w]``; labels ``long[N]``; is_crowd ``bool[N]``.
    segments: ``long[H0, W0]`` at the original size, index into ``labels``, -1 = void.
    point_source: what the masks are, for point sampling: ``None`` = fine masks; another name
        (``"coarse"``, ``"box"``) selects ``PanopticCollate.source_samplers[name]``.
    seed: the sample's own seed (set by ``vitp.data.loader.SampleReader`` for training samples): its
        augmentation was drawn under it and its points are drawn from it.
    """

    image: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    is_crowd: torch.Tensor
    segments: torch.Tensor
    image_id: Any
    file_name: str
    orig_size: tuple[int, int]
    image_path: str | None = None
    point_source: str | None = None
    seed: int | None = None


def _round_up(x: int, d: int) -> int:
    return int(math.ceil(x / d) * d) if d > 1 else x


class PanopticCollate:
    """Pads images and masks (bottom/right) to a common frame and builds a ``Batch``.

    Args:
        size_divisor: the frame's height and width are rounded up to a multiple of this.
        fixed_size: when set, the frame is at least ``fixed_size x fixed_size`` (square padding),
            so every batch has the same shape.
        point_sampler: when set, ``point_sampler(target, generator)`` is called per image and
            ``Batch.points`` / ``Batch.point_labels`` are filled (padded with label -1).
        seed: points of evaluation batches: each image's points are drawn from a generator seeded with
            ``(seed, image_id)``, so they do not depend on the batch or the process an image lands in.
            Samples that carry their own ``Sample.seed`` (training) use it instead. Without either,
            one seed per batch is drawn from torch's global RNG.
        source_samplers: samplers for samples whose ``point_source`` is set (e.g. ``{"coarse": ...,
            "box": ...}``); a sample with an unknown source is an error. Only used with
            ``point_sampler``.
    """

    def __init__(
        self,
        size_divisor: int = 32,
        fixed_size: int | None = None,
        point_sampler: PointSampler | None = None,
        seed: int | None = None,
        source_samplers: dict[str, PointSampler] | None = None,
    ) -> None:
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.size_divisor = size_divisor
        self.fixed_size = fixed_size
        self.point_sampler = point_sampler
        self.seed = seed
        self.source_samplers = dict(source_samplers or {})

    def _sampler(self, sample: Sample) -> PointSampler:
        if sample.point_source is None:
            return self.point_sampler
        if sample.point_source not in self.source_samplers:
            raise ValueError(f"{sample.file_name}: no point sampler for point_source {sample.point_source!r} "
                             f"(known: {sorted(self.source_samplers)})")
        return self.source_samplers[sample.point_source]

    def frame_size(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        if self.fixed_size is not None:
            h, w = max(h, self.fixed_size), max(w, self.fixed_size)
        return _round_up(h, self.size_divisor), _round_up(w, self.size_divisor)

    def __call__(self, samples: list[Sample]) -> Batch | AllSkipped:
        skipped = [s.message for s in samples if isinstance(s, SkippedSample)]
        if skipped:  # on_bad_sample=skip: the loader reports them (in the main process)
            samples = [s for s in samples if not isinstance(s, SkippedSample)]
            if not samples:
                return AllSkipped(skipped)
        batch = self._collate(samples)
        if skipped:
            batch.skipped = skipped  # read by vitp.data.loader.VitpDataLoader
        return batch

    def _generators(self, samples: list[Sample]) -> list[torch.Generator]:
        """One points generator per sample: its own seed, else ``(self.seed, image_id)``, else a
        generator shared by the batch, seeded from torch's global RNG."""
        if all(s.seed is not None for s in samples) or self.seed is not None:
            gens = []
            for s in samples:
                g = torch.Generator()
                g.manual_seed(mix_seed("points", s.seed) if s.seed is not None
                              else mix_seed("points", self.seed, s.image_id))
                gens.append(g)
            return gens
        g = torch.Generator()
        g.manual_seed(int(torch.randint(0, 2**62, ())))
        return [g] * len(samples)

    def _collate(self, samples: list[Sample]) -> Batch:
        sizes = [tuple(s.image.shape[-2:]) for s in samples]
        H, W = self.frame_size(sizes)
        images = samples[0].image.new_zeros((len(samples), 3, H, W))
        targets = []
        for i, s in enumerate(samples):
            h, w = sizes[i]
            images[i, :, :h, :w] = s.image
            masks = torch.zeros((s.masks.shape[0], H, W), dtype=torch.bool)
            masks[:, :h, :w] = s.masks
            targets.append(Target(
                masks=masks, labels=s.labels, is_crowd=s.is_crowd, segments=s.segments,
                image_id=s.image_id, file_name=s.file_name, orig_size=s.orig_size, valid_size=(h, w),
                image_path=s.image_path,
            ))
        batch = Batch(images=images, targets=targets)
        if self.point_sampler is not None:
            gens = self._generators(samples)
            pts, lbs = zip(*(self._sampler(s)(t, g) for s, t, g in zip(samples, targets, gens)))
            P = max([p.shape[0] for p in pts] + [1])
            points = torch.zeros((len(targets), P, 2), dtype=torch.float32)
            labels = torch.full((len(targets), P), -1, dtype=torch.long)
            for i, (p, lb) in enumerate(zip(pts, lbs)):
                points[i, : p.shape[0]] = p.float()
                labels[i, : lb.shape[0]] = lb.long()
            batch.points, batch.point_labels = points, labels
        return batch
