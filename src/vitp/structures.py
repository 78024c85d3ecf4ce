"""The few data structures that cross module boundaries.

Conventions (see DESIGN.md, "Data that crosses boundaries"):

* Classes are contiguous ``0..K-1``; ``DatasetInfo.category_ids[k]`` is the dataset's original id.
* ``Target.masks`` live in the *input frame* (the padded tensor the model sees); ``Target.segments``
  is the ground truth at the *original* image size and is what metrics compare against.
* A proposer's ``class_logits`` have ``K + 1`` columns, the last one being "no object".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# The outputs' contracts, re-exported so that every room imports its contracts from here.
from vitp.predictions import (TASKS, VARIANTS, InstancePrediction, PanopticPrediction, Prediction, Task,  # noqa: F401
                              Variant, check_task)

IGNORE_INDEX = 255
"""Label of unlabelled pixels in semantic maps."""


@dataclass(frozen=True)
class HeadMismatch:
    """A part's pretrained class layers that do not fit the data's label space (a proposer sets it;
    ``vitp.checkpoint_heads.fit_proposer_head`` replaces the head or raises)."""

    part: str  # e.g. "Mask2FormerProposer"
    source: str  # the weights' hub id, folder or file
    detail: str  # what does not fit, and why no mapping applies


@dataclass(frozen=True)
class DatasetInfo:
    """Label-space facts of a dataset, linked from the data module into the model."""

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    is_thing: tuple[bool, ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if len(self.category_ids) != n or len(self.is_thing) != n:
            raise ValueError(
                f"DatasetInfo: {n} class names, {len(self.category_ids)} category ids and "
                f"{len(self.is_thing)} thing flags; all three must have the same length"
            )
        if len(set(self.category_ids)) != n:
            raise ValueError(f"DatasetInfo: duplicate category ids in {self.category_ids}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def thing_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """``bool[K]``: True for thing classes."""
        return torch.tensor(self.is_thing, dtype=torch.bool, device=device)

    def contiguous_id(self, category_id: int) -> int:
        """Map an original category id to 0..K-1 (KeyError naming the id when unknown)."""
        try:
            return self.category_ids.index(category_id)
        except ValueError:
            raise KeyError(f"unknown category id {category_id}") from None


@dataclass
class Target:
    """Ground truth of one image.

    masks: ``bool[N, H, W]`` in the input frame (padded batch size), one per segment.
    labels: ``long[N]`` contiguous class ids.
    is_crowd: ``bool[N]``.
    segments: ``long[H0, W0]`` at the original size, index into ``labels`` per pixel, -1 = void.
    image_id: the dataset's image id (int for COCO, may be str elsewhere).
    file_name: image file name (without directory), used to name exported files.
    orig_size: ``(H0, W0)`` of the original image.
    valid_size: ``(h, w)`` of the region of the input frame that holds the (resized) image,
        starting at the top-left corner; the rest is padding.
    image_path: the original image file, when the data comes from files (used for overlays).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    is_crowd: torch.Tensor
    segments: torch.Tensor
    image_id: Any
    file_name: str
    orig_size: tuple[int, int]
    valid_size: tuple[int, int]
    image_path: str | None = None

    def to(self, device: torch.device | str) -> "Target":
        return Target(
            masks=self.masks.to(device),
            labels=self.labels.to(device),
            is_crowd=self.is_crowd.to(device),
            segments=self.segments.to(device),
            image_id=self.image_id,
            file_name=self.file_name,
            orig_size=self.orig_size,
            valid_size=self.valid_size,
            image_path=self.image_path,
        )


@dataclass
class Batch:
    """What a data module yields.

    images: ``float[B, 3, H, W]`` normalised and padded to a common size.
    targets: one ``Target`` per image.
    points: optional point supervision ``float[B, P, 2]``, (y, x) in [-1, 1] relative to the valid
        region; ``point_labels`` ``long[B, P]`` with -1 for padding.
    skipped: messages of samples the collate dropped (``on_bad_sample=skip``), reported by the loader.
    train_position: where the training loader stood (``{"epoch", "batches"}``), for resuming.
    """

    images: torch.Tensor
    targets: list[Target]
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)
    train_position: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def valid_sizes(self) -> list[tuple[int, int]]:
        return [t.valid_size for t in self.targets]

    def valid_tensor(self) -> torch.Tensor:
        """``long[B, 2]``: each image's valid (h, w) region in the input frame, on the images' device."""
        return torch.tensor(self.valid_sizes, dtype=torch.long, device=self.images.device)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            images=self.images.to(device),
            targets=[t.to(device) for t in self.targets],
            points=None if self.points is None else self.points.to(device),
            point_labels=None if self.point_labels is None else self.point_labels.to(device),
            skipped=list(self.skipped),
            train_position=self.train_position,
        )


@dataclass
class PointMasks:
    """The segment mask each query point belongs to.

    masks: per image ``[N_b, h_b, w_b]`` (bool or float in [0, 1]) covering exactly the image's valid
        region (any resolution: a point's window is mapped onto it).
    index: ``long[B, P]``, the mask of each point in its image's stack; -1 = none (an empty mask).
    """

    masks: list[torch.Tensor]
    index: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.masks) != self.index.shape[0]:
            raise ValueError(f"PointMasks: {len(self.masks)} mask stacks for {self.index.shape[0]} images")
        for b, m in enumerate(self.masks):
            if m.dim() != 3:
                raise ValueError(f"PointMasks: image {b}'s masks must be [N, h, w], got {tuple(m.shape)}")
        # one device sync for all images (this runs on every classifier call and chunk)
        counts = torch.tensor([len(m) for m in self.masks], device=self.index.device)
        beyond = (self.index >= counts[:, None]).any(1)
        if self.index.numel() and bool(beyond.any()):
            b = int(beyond.nonzero()[0])
            raise ValueError(f"PointMasks: image {b} has {len(self.masks[b])} masks, a point refers to mask "
                             f"{int(self.index[b].max())}")

    def points(self, start: int, stop: int) -> "PointMasks":
        """The masks of points ``start:stop`` (same stacks)."""
        return PointMasks(self.masks, self.index[:, start:stop])

    @staticmethod
    def concat(parts: "list[PointMasks]") -> "PointMasks":
        """One ``PointMasks`` of the points of ``parts`` in order: per image the mask stacks are
        concatenated and every part's indices shifted past the stacks before it (-1 stays -1)."""
        stacks, index = [], []
        device = parts[0].index.device
        for b in range(parts[0].index.shape[0]):
            offset, own = 0, []
            for part in parts:
                idx = part.index[b].to(device)
                own.append(torch.where(idx >= 0, idx + offset, idx))
                offset += len(part.masks[b])
            stacks.append(torch.cat([part.masks[b].to(device) for part in parts]))
            index.append(torch.cat(own))
        return PointMasks(stacks, torch.stack(index))


@dataclass
class DecoderLayerOutput:
    """One intermediate decoder layer's predictions, for deep supervision in a proposer's loss.

    mask_logits: ``float[B, Q, h, w]``; class_logits: ``float[B, Q, K_p + 1]`` in the proposer's own
    label space (what its loss compares with the ground truth).
    """

    mask_logits: torch.Tensor
    class_logits: torch.Tensor


@dataclass
class TrunkStates:
    """The tokens entering each ViT block from ``first_block`` on, from a proposer whose patch tokens
    never read its queries (``EomtProposer`` with ``query_attention: one_way``): a one-way point
    classifier with the same trunk weights can read them instead of running its own patch pass
    (``PointViT.cache_from_trunk``).

    states: ``float[B, num_prefix + Gh * Gw, D]`` per block (prefix tokens first).
    first_block: the block ``states[0]`` enters.
    num_prefix: class / register tokens before the patches.
    grid: ``(Gh, Gw)`` patch grid of the square frame.
    scale: input frame -> square frame (the padded batch was resized by this factor, top-left).
    """

    states: list[torch.Tensor]
    first_block: int
    num_prefix: int
    grid: tuple[int, int]
    scale: float


EMPTY_MASK_LOGIT = -1.0e4  # the mask logit of a padding proposal: no pixel (finite, so it resizes; fits float16)


@dataclass
class Proposals:
    """Output of a ``MaskProposer``: what every proposer returns, and nothing free-form.

    mask_logits: ``float[B, Q, h, w]`` covering the whole padded input frame (any resolution).
    class_logits: ``float[B, Q, K + 1]`` in the dataset's label space (last column = no object), or
        None for class-agnostic proposers.
    objectness: ``float[B, Q]`` in [0, 1], the proposer's probability that a proposal is an object.
        Class-agnostic proposers set it; otherwise it may be None and :meth:`object_probs` derives it
        as ``1 - p(no object)`` from ``class_logits``.
    valid_sizes: optional ``long[B, 2]``, the (h, w) region of ``mask_logits`` (top-left aligned)
        that holds each image. None means "the same fraction of the frame as the input's valid
        region", which is right for any proposer that maps the whole input frame to its output.
    tasks: the task each image was proposed for (task-conditioned proposers differ per task).

    Read back only by the proposer's own ``loss`` (None / empty for proposers without one):

    raw_class_logits: ``float[B, Q, K_p + 1]`` in the proposer's own label space (differs from
        ``class_logits`` when a pretrained label space is mapped to the dataset's).
    layers: intermediate decoder layers, for deep supervision.
    query_embeddings: ``float[B, Q', D]`` per-query embeddings for extra losses (OneFormer's
        contrastive text-query loss).
    trunk: the proposer's trunk states, when it shares them (see ``TrunkStates``).
    """

    mask_logits: torch.Tensor
    class_logits: torch.Tensor | None = None
    objectness: torch.Tensor | None = None
    valid_sizes: torch.Tensor | None = None
    tasks: tuple[str, ...] = ()
    raw_class_logits: torch.Tensor | None = None
    layers: list[DecoderLayerOutput] = field(default_factory=list)
    query_embeddings: torch.Tensor | None = None
    trunk: TrunkStates | None = None

    @property
    def class_agnostic(self) -> bool:
        return self.class_logits is None

    def object_probs(self) -> torch.Tensor:
        """``float[B, Q]``: probability that each proposal is an object (see ``objectness``)."""
        if self.objectness is not None:
            return self.objectness.float()
        if self.class_logits is not None:
            return 1.0 - self.class_logits.float().softmax(-1)[..., -1]
        return self.mask_logits.new_ones(self.mask_logits.shape[:2], dtype=torch.float)

    def take(self, index: torch.Tensor, real: torch.Tensor | None = None) -> "Proposals":
        """The proposals ``index long[B, P]`` of each image (repeats allowed), for inference: masks,
        classes and objectness; what only the proposer's loss reads is left out. Where ``real
        bool[B, P]`` is False (padding), the mask is empty (every logit :data:`EMPTY_MASK_LOGIT`)."""
        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return torch.take_along_dim(t, index.view(*index.shape, *([1] * (t.dim() - 2))), dim=1)

        masks = rows(self.mask_logits)
        if real is not None and not bool(real.all()):
            masks[~real] = EMPTY_MASK_LOGIT
        return Proposals(mask_logits=masks, class_logits=rows(self.class_logits), objectness=rows(self.objectness),
                         valid_sizes=self.valid_sizes, tasks=self.tasks, trunk=self.trunk)


@dataclass
class PointLogits:
    """The point classifier's logits of one proposal set, ``float[B, Q, C]``, and which proposals it
    read (``classified bool[B, Q]``; None: all). The rows of the others are zeros and are never read
    as classes: ViT-P labels those proposals no object (:meth:`void_unclassified`)."""

    logits: torch.Tensor
    classified: torch.Tensor | None = None

    def void_unclassified(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs float[B, Q, K + 1]`` with the unclassified proposals' rows set to no object."""
        if self.classified is None:
            return probs
        void = torch.zeros_like(probs)
        void[..., -1] = 1.0
        return torch.where(self.classified[..., None].to(probs.device), probs, void)


# Checkpoints store the linked DatasetInfo in their hyper-parameters; let `torch.load(...,
# weights_only=True)` (Lightning's default for --ckpt_path) read it back.
torch.serialization.add_safe_globals([DatasetInfo])
