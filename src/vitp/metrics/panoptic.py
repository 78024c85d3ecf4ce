"""Panoptic quality with panopticapi ``pq_compute`` semantics, vectorised per image."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vitp.metrics._hist import joint_histogram
from vitp.structures import DatasetInfo, PanopticPrediction, Target


def _nan_tensor(device: torch.device) -> Tensor:
    return torch.tensor(float("nan"), dtype=torch.float64, device=device)


def panoptic_stats(
    gt_segments: Tensor,
    gt_labels: Tensor,
    gt_is_crowd: Tensor,
    pred_segments: Tensor,
    pred_labels: Tensor,
    num_classes: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class ``(iou_sum float64[K], tp long[K], fp long[K], fn long[K])`` of one image.

    Mirrors panopticapi's ``pq_compute_single_core``: ``-1`` is void in both maps; a predicted
    segment matches a non-crowd ground-truth segment of the same class when
    ``intersection / (pred_area + gt_area - intersection - pred_void_overlap) > 0.5``; crowd
    segments are neither matched nor false negatives; an unmatched predicted segment is not a false
    positive when more than half of it lies on void or on crowd regions of its own class.
    Segments (ground truth or predicted) with no pixel are ignored.
    """
    device = gt_segments.device
    pred_segments = pred_segments.to(device)
    n_gt = int(gt_labels.numel())
    n_pred = int(pred_labels.numel())
    gt_labels = gt_labels.to(device=device, dtype=torch.long)
    pred_labels = pred_labels.to(device=device, dtype=torch.long)
    gt_is_crowd = gt_is_crowd.to(device=device, dtype=torch.bool)
    if gt_segments.shape != pred_segments.shape:
        raise ValueError(
            f"panoptic prediction of shape {tuple(pred_segments.shape)} does not match the ground "
            f"truth of shape {tuple(gt_segments.shape)} (both must be at the original image size)"
        )

    # joint histogram of (gt index + 1, pred index + 1); row/column 0 = void
    joint = joint_histogram(gt_segments, pred_segments, n_gt + 1, n_pred + 1, a_offset=1, b_offset=1)
    inter = joint[1:, 1:]  # [N, S]
    gt_area = joint[1:, :].sum(1)  # [N]
    pred_area = joint[:, 1:].sum(0)  # [S]
    pred_void = joint[0, 1:]  # [S]

    same_class = gt_labels[:, None] == pred_labels[None, :]
    gt_valid = gt_area > 0
    pred_valid = pred_area > 0
    union = pred_area[None, :] + gt_area[:, None] - inter - pred_void[None, :]
    # IoU > 0.5 exactly as an integer comparison; unique matches follow from it
    match = (2 * inter > union) & same_class & (gt_valid & ~gt_is_crowd)[:, None] & pred_valid[None, :]
    iou = inter.double() / union.clamp(min=1).double()

    gt_matched = match.any(1)
    pred_matched = match.any(0)

    iou_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
    iou_sum.index_add_(0, gt_labels, (iou * match).sum(1))
    tp = torch.bincount(gt_labels[gt_matched], minlength=num_classes)
    fn = torch.bincount(gt_labels[gt_valid & ~gt_is_crowd & ~gt_matched], minlength=num_classes)

    crowd_same = (gt_is_crowd[:, None] & same_class).long()
    ignored = pred_void + (inter * crowd_same).sum(0)
    is_fp = pred_valid & ~pred_matched & ~(2 * ignored > pred_area)
    fp = torch.bincount(pred_labels[is_fp], minlength=num_classes)
    return iou_sum, tp[:num_classes], fp[:num_classes], fn[:num_classes]


class PanopticQuality(Metric):
    """Panoptic quality (PQ, SQ, RQ; all / things / stuff) in percent, panopticapi semantics.

    ``update(preds, targets)`` takes one ``PanopticPrediction`` and one ``Target`` per image (the
    ground truth is ``Target.segments`` at the original size). States are per-class sums, so the
    metric synchronises under DDP. ``compute()`` returns ``pq, sq, rq, pq_th, sq_th, rq_th, pq_st,
    sq_st, rq_st``; classes with no ground truth and no prediction are left out of the averages,
    an empty group (e.g. no stuff class) gives NaN. ``compute_per_class()`` gives per-class arrays.

    Differences from panopticapi, both only for inputs panopticapi rejects or never sees: segments
    without pixels are ignored (panopticapi raises for predicted ones), and several crowd segments
    of one class in an image act as one crowd region (panopticapi keeps only the last one).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor

    def __init__(self, dataset_info: DatasetInfo, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dataset_info = dataset_info
        k = dataset_info.num_classes
        self.add_state("iou_sum", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tp", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fp", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fn", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.register_buffer("_is_thing", dataset_info.thing_mask(), persistent=False)

    def update(self, preds: Sequence[PanopticPrediction], targets: Sequence[Target]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        k = self.dataset_info.num_classes
        for pred, target in zip(preds, targets):
            iou_sum, tp, fp, fn = panoptic_stats(
                target.segments, target.labels, target.is_crowd, pred.segments, pred.labels, k
            )
            self.iou_sum += iou_sum.to(self.iou_sum.device)
            self.tp += tp.to(self.tp.device)
            self.fp += fp.to(self.fp.device)
            self.fn += fn.to(self.fn.device)

    def compute_per_class(self) -> dict[str, Tensor]:
        """``pq, sq, rq`` as ``float64[K]`` in percent (NaN for classes without GT and prediction),
        plus the raw ``tp, fp, fn`` counts and ``iou_sum``."""
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        present = (self.tp + self.fp + self.fn) > 0
        denom = (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-12)
        pq = self.iou_sum / denom
        rq = tp / denom
        sq = torch.where(self.tp > 0, self.iou_sum / tp.clamp(min=1), torch.zeros_like(tp))
        nan = torch.full_like(pq, float("nan"))
        out = {name: torch.where(present, v * 100.0, nan) for name, v in (("pq", pq), ("sq", sq), ("rq", rq))}
        out.update(tp=self.tp.clone(), fp=self.fp.clone(), fn=self.fn.clone(), iou_sum=self.iou_sum.clone())
        return out

    def compute(self) -> dict[str, Tensor]:
        per = self.compute_per_class()
        present = (self.tp + self.fp + self.fn) > 0
        thing = self._is_thing.to(present.device)
        out: dict[str, Tensor] = {}
        for suffix, sel in (("", torch.ones_like(thing)), ("_th", thing), ("_st", ~thing)):
            m = present & sel
            for name in ("pq", "sq", "rq"):
                out[name + suffix] = per[name][m].mean() if bool(m.any()) else _nan_tensor(m.device)
        return out
