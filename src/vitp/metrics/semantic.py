"""Semantic segmentation mIoU from a confusion matrix."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vitp.metrics._hist import joint_histogram
from vitp.structures import DatasetInfo, Target


def semantic_target(target: Target, ignore_index: int = -1) -> Tensor:
    """``long[H0, W0]`` class map of a target: void pixels get ``ignore_index``, crowd pixels keep
    their class (as the COCO / ADE20K semantic evaluations do)."""
    seg = target.segments.long()
    labels = target.labels.to(seg.device).long()
    lut = torch.cat([labels, labels.new_tensor([ignore_index])])  # index -1 -> last entry
    return lut[seg]


class MeanIoU(Metric):
    """Semantic mIoU (and pixel accuracy) in percent over a ``K x K`` confusion matrix.

    ``update(preds, targets)``: one ``long[H0, W0]`` map of contiguous class ids per image; the
    ground truth comes from ``Target.segments`` / ``labels`` (void ignored, crowd kept). Predicted
    values outside ``0..K-1`` count as wrong for the ground-truth class and as nobody's false
    positive. ``compute()`` -> ``{"miou", "acc"}``: mean over classes whose union is not empty.
    ``compute_per_class()`` -> ``{"iou": float64[K] (NaN where the union is empty)}``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(self, dataset_info: DatasetInfo, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dataset_info = dataset_info
        k = dataset_info.num_classes
        # rows: ground truth, columns: prediction (+1 column for out-of-range predictions)
        self.add_state("confmat", torch.zeros(k, k + 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Tensor], targets: Sequence[Target]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        k = self.dataset_info.num_classes
        for pred, target in zip(preds, targets):
            seg = target.segments
            if pred.shape != seg.shape:
                raise ValueError(
                    f"semantic prediction of shape {tuple(pred.shape)} does not match the ground truth "
                    f"of shape {tuple(seg.shape)}"
                )
            p = pred.to(seg.device).long()
            p = torch.where((p >= 0) & (p < k), p, torch.full_like(p, k))
            n = int(target.labels.numel())
            # histogram over (gt segment, predicted class), then rows summed per gt class;
            # the void row (segment -1) is dropped
            by_segment = joint_histogram(seg, p, n + 1, k + 1, a_offset=1)[1:]
            labels = target.labels.to(by_segment.device).long()
            cm = torch.zeros_like(self.confmat, device=by_segment.device).index_add_(0, labels, by_segment)
            self.confmat += cm.to(self.confmat.device)

    def compute_per_class(self) -> dict[str, Tensor]:
        """``iou`` as ``float64[K]`` in percent, NaN for classes absent from GT and prediction."""
        k = self.dataset_info.num_classes
        cm = self.confmat.double()
        tp = cm.diagonal()
        union = cm.sum(1) + cm[:, :k].sum(0) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return {"iou": iou * 100.0}

    def compute(self) -> dict[str, Tensor]:
        iou = self.compute_per_class()["iou"]
        total = self.confmat.sum()
        acc = self.confmat.diagonal().sum().double() / total.clamp(min=1) * 100.0
        if total == 0:
            acc = torch.tensor(float("nan"), dtype=torch.float64, device=acc.device)
        return {"miou": iou.nanmean(), "acc": acc}
