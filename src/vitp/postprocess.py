"""Mask logits + class probabilities -> semantic, instance and panoptic results.

One implementation, used by validation, test and predict. Semantics follow Mask2Former's
inference (object-mask threshold, overlap threshold, stuff of one class merged into one segment,
top-k instances rescored by mask confidence); results are at the original image size with the
padding removed.

Memory is bounded by design: the mask logits stay at mask resolution (padding cropped) in
:class:`UpsampledLogits`, and each task reads them back at the output size a band of rows at a
time (about ``chunk_elements`` floats per band), so no ``float[Q, H0, W0]`` tensor is ever built.
Peak memory is the low-resolution logits, one band, and the outputs (``long[H0, W0]`` maps and
the kept instances' ``bool[H0, W0]`` masks). The bands (``vitp.upsampling``) are computed with
the arithmetic of torch's own bilinear kernel (``F.interpolate``, ``align_corners=False``), so the
results equal those of interpolating the whole stack at once, up to float32 ulps in some shapes
(``vitp.upsampling``; ``tests/reference_postprocess.py`` is the old code, ``tests/test_postprocess_memory.py``
compares them). Each task is a part (``vitp.postprocess_parts``) that reads, per band, only the
queries (and, for the semantic task, the classes) that may matter there (``vitp.rule_out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from vitp.predictions import resize_prediction
from vitp.postprocess_parts import _Instance, _Panoptic, _Semantic
from vitp.structures import InstancePrediction, PanopticPrediction, Prediction
from vitp.upsampling import UpsampledLogits, crop_and_resize, crop_logits

__all__ = ["PostProcessConfig", "UpsampledLogits", "crop_and_resize", "crop_logits", "panoptic_inference",
           "semantic_inference", "instance_inference", "infer", "resize_prediction"]

KEEP_RULES = ("objectness", "reference")
LOCAL_BANDS = 8  # at least this many bands of rows (of at most 64 rows) when the panoptic part reads
# only its local candidates: short enough to localise, long enough that per-band overhead stays small


@dataclass(frozen=True)
class PostProcessConfig:
    """Thresholds of the Mask2Former-style post-processing and the panoptic keep rule.

    Class probabilities ``p[Q, K + 1]`` factor as ``p[:, k] = objectness * p(k | object)`` and
    ``p[:, K] = 1 - objectness``. Each panoptic segment candidate is *labelled* with its most likely
    class and *ranked* (which query wins a pixel) by ``objectness * p(label | object)`` under both
    rules; they differ in which candidates are *kept*:

    * ``reference`` (Mask2Former, ViT-P): the top of ``p`` over all K + 1 columns is a class and
      exceeds ``object_mask_threshold``. Keeping then depends on class confidence: fusing with a
      less certain classifier flattens ``p`` and drops segments.
    * ``objectness``: ``objectness > keep_threshold``, whatever the class confidence.

    overlap_threshold: a segment is kept only if the part it wins in the argmax is at least this
        fraction of its own (sigmoid >= 0.5) mask.
    topk_instances: number of (query, class) pairs kept for instance segmentation.
    score_threshold: panoptic segment candidates whose score is below it are not kept (before
        they compete for pixels), nor instances whose final score is below it; 0 keeps all.
    rule_out: on large outputs, leave out at mask resolution the panoptic candidates that cannot
        win a pixel and the semantic classes that cannot, and read per band of rows only those that
        compete there (exact: the result is the same; False only to measure what it saves).
    """

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100
    keep_rule: Literal["objectness", "reference"] = "reference"
    keep_threshold: float = 0.5
    score_threshold: float = 0.0
    rule_out: bool = True

    def __post_init__(self) -> None:
        if self.keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule must be one of {KEEP_RULES}, got {self.keep_rule!r}")


def _lazy(mask_logits: torch.Tensor | UpsampledLogits) -> UpsampledLogits:
    if isinstance(mask_logits, UpsampledLogits):
        return mask_logits
    return UpsampledLogits(mask_logits, tuple(mask_logits.shape[-2:]))


def semantic_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor) -> torch.Tensor:
    """``float[Q, H, W]`` logits, ``float[Q, K + 1]`` probabilities -> ``long[H, W]`` classes."""
    return infer(mask_logits, class_probs, torch.zeros(0, dtype=torch.bool), ("semantic",)).semantic


def panoptic_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor,
                       is_thing: torch.Tensor, config: PostProcessConfig = PostProcessConfig()) -> PanopticPrediction:
    """Mask2Former panoptic inference for one image (logits seen at the output resolution)."""
    return infer(mask_logits, class_probs, is_thing, ("panoptic",), config).panoptic


def instance_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor,
                       is_thing: torch.Tensor, config: PostProcessConfig = PostProcessConfig()) -> InstancePrediction:
    """Mask2Former instance inference: top-k (query, thing class) pairs rescored by mask quality."""
    return infer(mask_logits, class_probs, is_thing, ("instance",), config).instance


def infer(
    mask_logits: torch.Tensor | UpsampledLogits,
    class_probs: torch.Tensor,
    is_thing: torch.Tensor,
    tasks: tuple[str, ...] = ("panoptic", "semantic", "instance"),
    config: PostProcessConfig = PostProcessConfig(),
) -> Prediction:
    """Run the requested tasks on logits at (or lazily seen at, :class:`UpsampledLogits`) the
    output size ``[Q, H0, W0]``: one pass over bands of rows serves every task."""
    logits = _lazy(mask_logits)
    parts: dict[str, Any] = {}
    if "semantic" in tasks:
        parts["semantic"] = _Semantic(logits, class_probs, config.rule_out)
    if "panoptic" in tasks:
        parts["panoptic"] = _Panoptic(logits, class_probs, is_thing, config)
    if "instance" in tasks:
        parts["instance"] = _Instance(logits, class_probs, is_thing, config)
    needed = torch.unique(torch.cat([p.queries for p in parts.values()])) if parts else None
    if needed is not None and len(needed):
        # the panoptic part reads a subset per band (the candidates competing there); alone, it gets
        # short bands. Beside other tasks (which read every query) the bands keep their size, so the
        # instance scores' float sums are taken over the same bands as before
        local = "panoptic" in parts and parts["panoptic"].local and len(parts) == 1
        max_rows = -(-logits.size[0] // max(LOCAL_BANDS, logits.size[0] // 64)) if local else None
        for y0, y1 in logits.bands(len(needed), max_rows):
            wanted = {name: part.band_queries(y0, y1) for name, part in parts.items() if len(part.queries)}
            rows = torch.unique(torch.cat(list(wanted.values())))  # sorted query ids read in this band
            if len(rows):
                band = logits.band(y0, y1, None if len(rows) == logits.shape[0] else rows)
                sigmoid = band.sigmoid()
            else:  # nothing to read here (one semantic class competes alone)
                band = sigmoid = logits.low.new_empty((0, y1 - y0, logits.size[1]))
            for name, queries in wanted.items():
                # pick: where a part's queries sit among the band's rows (None: all of them); each part
                # copies out what it needs, or reads the band whole and picks its results
                pick = None if torch.equal(queries, rows) else torch.searchsorted(rows, queries)
                parts[name].update(y0, y1, queries, band, sigmoid, pick)
    prediction = Prediction()
    if "semantic" in parts:
        prediction.semantic = parts["semantic"].out
    if "panoptic" in parts:
        prediction.panoptic = parts["panoptic"].finish()
    if "instance" in parts:
        prediction.instance = parts["instance"].finish()
    return prediction
