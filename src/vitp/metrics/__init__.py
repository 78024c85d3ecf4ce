"""Segmentation metrics (torchmetrics, DDP-safe) that agree with the reference evaluators.

* ``PanopticQuality``: panopticapi ``pq_compute`` (void, crowd) — PQ/SQ/RQ, things/stuff.
* ``MeanIoU``: semantic mIoU over a confusion matrix.
* ``MaskAP``: COCOeval ``segm`` via faster-coco-eval.
* ``SegmentationMetrics``: the three behind one ``update(list[Prediction], list[Target])``.
"""

from vitp.metrics.collection import SegmentationMetrics
from vitp.metrics.instance import AP_KEYS, MaskAP, encode_masks
from vitp.metrics.panoptic import PanopticQuality, panoptic_stats
from vitp.metrics.semantic import MeanIoU, semantic_target

SemanticIoU = MeanIoU

__all__ = [
    "AP_KEYS",
    "MaskAP",
    "MeanIoU",
    "PanopticQuality",
    "SegmentationMetrics",
    "SemanticIoU",
    "encode_masks",
    "panoptic_stats",
    "semantic_target",
]
