"""What inference returns for one image, and the names of the tasks and the class sources.

Re-exported by ``vitp.structures`` (import the contracts from there). Every result is at the
image's original size ``(H0, W0)``; class ids are the contiguous ``0..K-1``. :func:`resize_prediction`
maps a result computed at a smaller size there (also importable from ``vitp.postprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

Task = Literal["semantic", "instance", "panoptic"]
TASKS: tuple[Task, ...] = get_args(Task)
"""The three tasks, in this order (OneFormer's task tokens are indexed by it)."""


def check_task(task: str) -> Task:
    """``task`` if it is one of ``TASKS`` (ValueError naming them otherwise)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task  # type: ignore[return-value]


Variant = Literal["vitp", "proposer", "oracle"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
"""Where the classes of the proposer's masks come from: ViT-P's point classifier (fused with the
proposer's objectness), the proposer's own class head, or the ground truth (oracle, an upper bound)."""


@dataclass
class PanopticPrediction:
    """Panoptic result of one image at its original size.

    segments: ``long[H0, W0]``, index into ``labels`` / ``scores`` per pixel, -1 = void.
    labels: ``long[S]`` contiguous class ids.
    scores: ``float[S]`` confidences.
    """

    segments: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor


@dataclass
class InstancePrediction:
    """Instance result of one image: ``masks bool[n, h, w]``, ``labels long[n]``, ``scores float[n]``
    (sorted by descending score).

    image_size: None when ``masks`` are at the image's original size ``(H0, W0)``. Otherwise the
        original size, and ``masks`` are stored at the (smaller) size they were post-processed at
        (``max_image_side``): the image-size mask ``i`` is their nearest-neighbour resize,
        :meth:`mask` (one at a time, so ``n`` masks of a large photo never take ``n x H0 x W0``
        bytes; :meth:`full_masks` builds all of them).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    image_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(H0, W0)``: the size of the image the masks stand for."""
        return self.image_size if self.image_size is not None else tuple(self.masks.shape[-2:])

    def mask(self, i: int, transposed: bool = False) -> torch.Tensor:
        """``bool[H0, W0]``: mask ``i`` at the image size (a view of ``masks[i]`` when stored at that
        size). ``transposed``: ``bool[W0, H0]`` instead, contiguous (its numpy ``.T`` is the
        column-major array COCO's RLE encoder reads, without a copy)."""
        m = self.masks[i]
        h0, w0 = self.size
        if self.image_size is not None and tuple(m.shape) != (h0, w0):
            return nearest_resize(m.t(), (w0, h0)) if transposed else nearest_resize(m, (h0, w0))
        return m.t().contiguous() if transposed else m

    def full_masks(self) -> torch.Tensor:
        """``bool[n, H0, W0]``: every mask at the image size (``n x H0 x W0`` bytes)."""
        if self.image_size is None:
            return self.masks
        out = torch.empty((len(self.masks), *self.size), dtype=torch.bool, device=self.masks.device)
        for i in range(len(self.masks)):
            out[i] = self.mask(i)
        return out


@dataclass
class Prediction:
    """All post-processed outputs for one image; a field is None when its task was not run.

    semantic: ``long[H0, W0]`` contiguous class ids.
    """

    semantic: torch.Tensor | None = None
    panoptic: PanopticPrediction | None = None
    instance: InstancePrediction | None = None

    def result(self, task: Task) -> torch.Tensor | PanopticPrediction | InstancePrediction | None:
        """The field of ``task`` (None when it was not run)."""
        return {"semantic": self.semantic, "panoptic": self.panoptic, "instance": self.instance}[check_task(task)]


def resize_prediction(pred: Prediction, size: tuple[int, int]) -> Prediction:
    """``pred`` mapped to ``size`` ``(H, W)`` by nearest neighbour (``F.interpolate``'s
    ``nearest``: source pixel ``floor(dst * in / out)``); scores and labels unchanged.

    The semantic and panoptic maps are resized; instance masks are not copied: they keep their
    post-processing size and the result says the image size (``InstancePrediction.image_size``),
    so each is resized only when read (``InstancePrediction.mask``), one at a time.
    """
    out = Prediction()
    if pred.semantic is not None:
        out.semantic = nearest_resize(pred.semantic, size)
    if pred.panoptic is not None:
        out.panoptic = PanopticPrediction(nearest_resize(pred.panoptic.segments, size), pred.panoptic.labels,
                                          pred.panoptic.scores)
    if pred.instance is not None:
        inst = pred.instance
        out.instance = InstancePrediction(inst.masks, inst.labels, inst.scores, image_size=(int(size[0]), int(size[1])))
    return out


def nearest_resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``t[..., h, w]`` resized to ``size`` ``(H, W)`` by nearest neighbour (``F.interpolate``'s
    ``nearest``: source pixel ``floor(dst * in / out)``), as a gather. Columns first: the per-pixel
    gather runs over the small map's rows, then whole rows are copied (0.73x the time of rows first
    for a 1333 x 1000 map shown at 4000 x 3000)."""
    h, w = t.shape[-2:]
    ys = torch.arange(size[0], device=t.device) * h // size[0]
    xs = torch.arange(size[1], device=t.device) * w // size[1]
    return t.index_select(-1, xs).index_select(-2, ys)
