"""One object holding PQ, mIoU and mask AP, fed with ``Prediction`` objects."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from vitp.metrics.instance import MaskAP
from vitp.metrics.panoptic import PanopticQuality
from vitp.metrics.semantic import MeanIoU
from vitp.structures import DatasetInfo, Prediction, Target


class SegmentationMetrics(nn.Module):
    """PQ + mIoU + mask AP behind one ``update(preds, targets)`` / ``compute()`` / ``reset()``.

    A metric is fed only the images whose prediction has its field (``panoptic``, ``semantic``,
    ``instance``) set, and reports only when it saw at least one. ``compute()`` returns plain floats
    in percent under stable keys: ``pq, sq, rq, pq_th, sq_th, rq_th, pq_st, sq_st, rq_st`` (panoptic),
    ``miou, acc`` (semantic), ``map, map_50, map_75, map_small, map_medium, map_large, mar_1,
    mar_10, mar_100, mar_small, mar_medium, mar_large`` (instance). It is an ``nn.Module`` so that
    it follows the LightningModule to its device.
    """

    def __init__(
        self,
        dataset_info: DatasetInfo,
        panoptic: bool = True,
        semantic: bool = True,
        instance: bool = True,
    ) -> None:
        super().__init__()
        self.panoptic = PanopticQuality(dataset_info) if panoptic else None
        self.semantic = MeanIoU(dataset_info) if semantic else None
        self.instance = MaskAP(dataset_info) if instance else None

    def update(self, preds: Sequence[Prediction], targets: Sequence[Target]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for metric, field in ((self.panoptic, "panoptic"), (self.semantic, "semantic"), (self.instance, "instance")):
            if metric is None:
                continue
            pairs = [(getattr(p, field), t) for p, t in zip(preds, targets) if getattr(p, field) is not None]
            if pairs:
                metric.update([p for p, _ in pairs], [t for _, t in pairs])

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in (self.panoptic, self.semantic, self.instance):
            if metric is not None and metric.update_count > 0:
                out.update({k: float(v) for k, v in metric.compute().items()})
        return out

    def reset(self) -> None:
        for metric in (self.panoptic, self.semantic, self.instance):
            if metric is not None:
                metric.reset()

    def forward(self, preds: Sequence[Prediction], targets: Sequence[Target]) -> None:  # noqa: D102
        self.update(preds, targets)


__all__ = ["SegmentationMetrics"]
