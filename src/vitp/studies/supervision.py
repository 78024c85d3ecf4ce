"""Supervision sources of the annotation-budget study: what each costs and how it samples points.

A *source* is named on the command line:

* ``fine``: fine masks (``vitp.points.ClassBalancedSampler``, the default recipe's sampler);
* ``coarse``: coarse masks, each segment eroded by ``coarse_margin`` pixels as a stand-in for
  Cityscapes-style coarse polygons (``vitp.points.CoarseMaskSampler``; segments that vanish are
  unlabelled, as in coarse sets). Erosion only: the polygons are not also simplified;
* ``box``: the tight box of every segment, points from its central half (``vitp.points.BoxSampler``);
* ``clicksK``: K clicked points per segment (:class:`ClickSampler`), e.g. ``clicks1``, ``clicks3``;
* mixtures ``SOURCE:FRACTION+SOURCE:FRACTION``, e.g. ``fine:0.1+box:0.9``: each image is annotated
  with one source, chosen once per image (:class:`FixedMixSampler`, by a hash of its id), so a
  fraction of the images carries fine masks and the rest boxes.

An image costs one annotation per non-crowd segment (``vitp.studies.costs``); a budget buys the
first images of the training split (their order in the annotation JSON: exactly what
``data.init_args.max_train_samples`` keeps) until the next image would exceed it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitp.points import BoxSampler, ClassBalancedSampler, CoarseMaskSampler, PointSampler, pixel_to_point, usable_masks
from vitp.studies.costs import AnnotationCost
from vitp.structures import Target


def unit_hash(*parts: Any) -> float:
    """A stable number in [0, 1) from ``parts`` (crc32 of their text; the same in every process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) / 2**32


class ClickSampler(PointSampler):
    """K clicked points per segment: the training points are drawn (uniformly, ``num_points`` per
    image) among those clicks only, so the classifier never sees the rest of the mask.

    Clicks are simulated once per image and class: the k-th click of a segment sits at a fixed
    position of its bounding box, drawn from a hash of (image id, class, k), snapped to the nearest
    pixel of the segment. Under training augmentation (scale, crop, flip) they move with the segment
    as a box-relative point does (a flip mirrors them).
    """

    def __init__(self, num_points: int = 128, clicks: int = 1) -> None:
        super().__init__(num_points)
        if clicks < 1:
            raise ValueError(f"clicks must be >= 1, got {clicks}")
        self.clicks = clicks

    def click_pixels(self, target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, labels)`` of every click of the image's usable segments."""
        masks, labels = usable_masks(target)
        rows, cols, out = [], [], []
        for mask, label in zip(masks.cpu().numpy(), labels.tolist()):
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            for k in range(self.clicks):
                v, u = unit_hash(target.image_id, label, k, "y"), unit_hash(target.image_id, label, k, "x")
                cy, cx = y0 + v * (y1 - y0), x0 + u * (x1 - x0)
                nearest = int(np.argmin((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2))
                rows.append(int(ys[nearest])), cols.append(int(xs[nearest])), out.append(label)
        return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), torch.tensor(out)

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        rows, cols, labels = self.click_pixels(target)
        if len(labels) == 0:
            return torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
        pick = torch.randint(len(labels), (self.num_points,), generator=generator)
        return pixel_to_point(rows[pick], cols[pick], target.valid_size), labels[pick].long()


class FixedMixSampler(PointSampler):
    """Each image is annotated with one of ``samplers``, chosen once (by :func:`unit_hash` of its id)
    with probabilities ``fractions``: a fixed share of the images carries each kind of annotation,
    as in a dataset labelled that way (``vitp.points.MixedSampler`` draws anew each time instead)."""

    def __init__(self, samplers: list[PointSampler], fractions: list[float]) -> None:
        if not samplers or len(samplers) != len(fractions) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(f"bad fractions {fractions} for {len(samplers)} samplers")
        super().__init__(max(s.num_points for s in samplers))
        self.samplers = list(samplers)
        self.fractions = [f / sum(fractions) for f in fractions]

    def choice(self, image_id: Any) -> int:
        """Index of the sampler annotating image ``image_id``."""
        return choose(self.fractions, image_id)

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        return self.samplers[self.choice(target.image_id)](target, generator)


def choose(fractions: Sequence[float], image_id: Any) -> int:
    """Which part of a mixture annotates ``image_id`` (fractions summing to 1)."""
    u, edge = unit_hash("mix", image_id), 0.0
    for i, f in enumerate(fractions):
        edge += f
        if u < edge:
            return i
    return len(fractions) - 1


@dataclass(frozen=True)
class Source:
    """A parsed source: its name and its parts ``(kind, clicks, fraction)`` (one part unless a mixture)."""

    name: str
    parts: tuple[tuple[str, int, float], ...]

    def fractions(self) -> list[float]:
        total = sum(f for _, _, f in self.parts)
        return [f / total for _, _, f in self.parts]


def parse_source(text: str) -> Source:
    """``fine`` / ``coarse`` / ``box`` / ``clicksK`` / ``A:0.1+B:0.9`` -> :class:`Source`."""
    parts = []
    for item in text.split("+"):
        name, _, frac = item.partition(":")
        kind, clicks = name, 0
        if name.startswith("clicks"):
            kind, clicks = "clicks", int(name[len("clicks"):] or 1)
        if kind not in ("fine", "coarse", "box", "clicks"):
            raise ValueError(f"unknown supervision source {name!r} in {text!r}; expected fine, coarse, box, "
                             "clicksK or a mixture such as fine:0.1+box:0.9")
        if "+" in text and not frac:
            raise ValueError(f"{text!r}: every part of a mixture needs a fraction, e.g. fine:0.1+box:0.9")
        parts.append((kind, clicks, float(frac) if frac else 1.0))
    return Source(text, tuple(parts))


def sampler_config(source: Source, num_points: int, coarse_margin: int) -> dict[str, Any]:
    """The ``data.init_args.point_sampler`` (class_path / init_args) of a source."""
    def one(kind: str, clicks: int) -> dict[str, Any]:
        if kind == "fine":
            return {"class_path": "vitp.points.ClassBalancedSampler", "init_args": {"num_points": num_points}}
        if kind == "coarse":
            return {"class_path": "vitp.points.CoarseMaskSampler",
                    "init_args": {"num_points": num_points, "margin": coarse_margin}}
        if kind == "box":
            return {"class_path": "vitp.points.BoxSampler", "init_args": {"num_points": num_points}}
        return {"class_path": "vitp.studies.supervision.ClickSampler",
                "init_args": {"num_points": num_points, "clicks": clicks}}

    if len(source.parts) == 1:
        return one(*source.parts[0][:2])
    return {"class_path": "vitp.studies.supervision.FixedMixSampler",
            "init_args": {"samplers": [one(k, c) for k, c, _ in source.parts], "fractions": source.fractions()}}


def annotation_seconds(kind: str, clicks: int, segments: int, costs: dict[str, AnnotationCost]) -> float:
    """Seconds to annotate ``segments`` segments of one image with ``kind``."""
    if kind == "clicks":
        return segments * clicks * costs["click"].seconds
    return segments * costs[{"fine": "fine_mask", "coarse": "coarse_mask", "box": "box"}[kind]].seconds


def image_costs(source: Source, images: Sequence[tuple[Any, int]], costs: dict[str, AnnotationCost]) -> list[float]:
    """Seconds per image (``images``: ``(image_id, non-crowd segment count)`` in training order)."""
    fractions = source.fractions()
    out = []
    for image_id, segments in images:
        kind, clicks, _ = source.parts[choose(fractions, image_id) if len(fractions) > 1 else 0]
        out.append(annotation_seconds(kind, clicks, segments, costs))
    return out


def images_within(budget: float, per_image: Sequence[float]) -> tuple[int, float]:
    """How many leading images ``budget`` seconds buy, and the seconds they cost."""
    spent, n = 0.0, 0
    for cost in per_image:
        if spent + cost > budget:
            break
        spent, n = spent + cost, n + 1
    return n, spent


__all__ = ["BoxSampler", "ClassBalancedSampler", "ClickSampler", "CoarseMaskSampler", "FixedMixSampler",
           "Source", "annotation_seconds", "image_costs", "images_within", "parse_source", "sampler_config"]
