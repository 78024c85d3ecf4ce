"""What the point classifier is trained on: a strategy chosen with one ``class_path`` block.

* :class:`GroundTruthPoints` (the paper): the data module's sampled points, labelled with their
  segment's class.
* :class:`ProposalPoints` (beyond the paper): those points plus one point per proposal of the
  frozen proposer, labelled with the class of the ground-truth segment it matches or "no object";
  the classifier gets a K+1-th "no object" output whose probability is fused with the proposer's
  objectness at inference (``InferenceSettings.fuse_objectness``).

A mask-aware classifier (``PointClassifier.needs_point_masks``) also gets each point's mask: its
ground-truth segment (optionally with proposer-like errors) or, for a proposal point, the proposal
as inference draws it (``vitp.proposal_geometry.proposal_point_masks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vitp.proposal_geometry import proposal_point_masks, valid_region_logits
from vitp.structures import Batch, PointMasks
from vitp.training.point_targets import ground_truth_point_masks, matched_proposal_index, proposal_point_targets

if TYPE_CHECKING:
    from vitp.pipeline import TwoStagePipeline


@dataclass
class PointTargets:
    """Training input of the classifier: ``points float[B, P, 2]``, ``labels long[B, P]`` (-1 =
    ignored), and each point's mask for a mask-aware classifier (else None)."""

    points: torch.Tensor
    labels: torch.Tensor
    masks: PointMasks | None = None


class GroundTruthPoints:
    """Train on the sampled ground-truth points only (the paper).

    Args:
        mask_jitter: for a mask-aware classifier, the probability that each ground-truth mask it
            reads gets proposer-like errors (coarser, grown or shrunk, shifted; see
            ``vitp.training.point_targets.jitter_masks``), so imperfect proposals at test time still
            show their segment's class. 0 = never.
    """

    no_object: bool = False
    """Whether the classifier learns a K+1-th "no object" output."""

    def __init__(self, mask_jitter: float = 0.0) -> None:
        if not 0.0 <= mask_jitter <= 1.0:
            raise ValueError(f"mask_jitter is a probability in [0, 1], got {mask_jitter}")
        self.mask_jitter = mask_jitter

    def check(self, needs_point_masks: bool) -> None:
        """Raise ``ValueError`` when the strategy does not fit the classifier."""

    def __call__(self, batch: Batch, pipeline: "TwoStagePipeline") -> PointTargets:
        if batch.points is None:
            raise ValueError("training the classifier needs point supervision: set data.point_sampler")
        masks = None
        if pipeline.classifier_needs_masks:
            masks = ground_truth_point_masks(batch, batch.points, self.mask_jitter)
        return PointTargets(batch.points, batch.point_labels, masks)


class ProposalPoints(GroundTruthPoints):
    """Sampled ground-truth points, then one point per proposal of the frozen proposer, labelled
    with the matched class or "no object" (see ``vitp.training.point_targets.proposal_point_targets``).

    Args:
        iou: IoU with a ground-truth segment for a proposal to count as that segment.
        images: the proposer runs on the first this many images of each training batch (None =
            all): bounds the extra cost; the other images contribute only their sampled points.
        read_proposal_masks: with a mask-aware classifier, ground-truth points on the images the
            proposer runs on read the mask of the proposal that matches their segment (IoU >=
            ``iou``) instead of the exact one: the outline they will read at test time.
        mask_jitter: as :class:`GroundTruthPoints`.
    """

    no_object = True

    def __init__(self, iou: float = 0.5, images: int | None = 4, read_proposal_masks: bool = False,
                 mask_jitter: float = 0.0) -> None:
        super().__init__(mask_jitter)
        self.iou = iou
        self.images = images
        self.read_proposal_masks = read_proposal_masks

    def check(self, needs_point_masks: bool) -> None:
        if self.read_proposal_masks and not needs_point_masks:
            raise ValueError("ProposalPoints(read_proposal_masks=True) needs a mask-aware classifier "
                             "(PointViT with glimpse.masks)")

    def __call__(self, batch: Batch, pipeline: "TwoStagePipeline") -> PointTargets:
        """The batch's sampled points followed by one point per proposal on the first ``images``
        images; the other images get padding (label -1) there."""
        if batch.points is None:
            raise ValueError("training the classifier needs point supervision: set data.point_sampler")
        n = len(batch) if self.images is None else min(len(batch), self.images)
        sub = Batch(batch.images[:n], batch.targets[:n])
        with torch.no_grad():
            proposals = pipeline.propose(sub, "panoptic")
            region = [valid_region_logits(proposals, sub, i) for i in range(n)]
            points, labels = proposal_point_targets(proposals, sub, pipeline.num_classes, self.iou, region)
        pad = len(batch) - n
        points = torch.cat([points, points.new_zeros((pad, *points.shape[1:]))])
        labels = torch.cat([labels, labels.new_full((pad, labels.shape[1]), -1)])
        all_points = torch.cat([batch.points, points], 1)
        all_labels = torch.cat([batch.point_labels, labels], 1)
        if not pipeline.classifier_needs_masks:
            return PointTargets(all_points, all_labels)
        gt = ground_truth_point_masks(batch, batch.points, self.mask_jitter)
        own = proposal_point_masks(sub, [proposals], [points[:n]], 1, pipeline.settings.point_mask_components,
                                   regions=[[r] for r in region])
        empty = [m.new_zeros((0, *m.shape[-2:]), dtype=torch.bool) for m in gt.masks[n:]]  # padded images
        proposal_masks = PointMasks(list(own.masks) + empty,
                                    torch.cat([own.index, own.index.new_full((pad, points.shape[1]), -1)]))
        if self.read_proposal_masks:
            for i, target in enumerate(batch.targets[:n]):
                h, w = target.valid_size
                gt.index[i] = matched_proposal_index(gt.index[i], own.masks[i], target.masks[:, :h, :w],
                                                     len(gt.masks[i]), self.iou)
        return PointTargets(all_points, all_labels, PointMasks.concat([gt, proposal_masks]))
