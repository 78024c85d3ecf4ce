"""The post-processing as it was before it worked in bands (commit 3d23a2e, src/vitp/postprocess.py),
kept verbatim below this note as the reference that tests/test_postprocess_memory.py compares the
band-wise implementation with. Not used by the package."""


from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from vitp.structures import InstancePrediction, PanopticPrediction, Prediction

__all__ = ["PostProcessConfig", "crop_and_resize", "panoptic_inference", "semantic_inference",
           "instance_inference", "infer"]

KEEP_RULES = ("objectness", "reference")


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
    """

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100
    keep_rule: Literal["objectness", "reference"] = "reference"
    keep_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule must be one of {KEEP_RULES}, got {self.keep_rule!r}")


def crop_and_resize(
    mask_logits: torch.Tensor,
    valid_size: tuple[int, int],
    orig_size: tuple[int, int],
    frame_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Remove padding from ``float[Q, h, w]`` mask logits and resize them to ``orig_size``.

    ``valid_size`` is the region holding the image, in the coordinates of ``frame_size`` (the
    padded input frame); with ``frame_size=None`` it is already in mask coordinates. When the
    valid region maps onto whole mask pixels it is cropped directly (exact for masks given at the
    original resolution); otherwise the logits are first upsampled to the frame, as Mask2Former
    does.
    """
    q, h, w = mask_logits.shape
    if frame_size is None:
        frame_size = (h, w)
    crop_h = valid_size[0] * h / frame_size[0]
    crop_w = valid_size[1] * w / frame_size[1]
    if crop_h.is_integer() and crop_w.is_integer():
        cropped = mask_logits[:, : int(crop_h), : int(crop_w)]
    else:
        cropped = F.interpolate(mask_logits[None], size=frame_size, mode="bilinear", align_corners=False)[0]
        cropped = cropped[:, : valid_size[0], : valid_size[1]]
    if tuple(cropped.shape[-2:]) == tuple(orig_size):
        return cropped
    if q == 0:
        return cropped.new_zeros((0, *orig_size))
    return F.interpolate(cropped[None], size=orig_size, mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_logits: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
    """``float[Q, H, W]`` logits, ``float[Q, K + 1]`` probabilities -> ``long[H, W]`` classes."""
    scores = torch.einsum("qk,qhw->khw", class_probs[:, :-1].float(), mask_logits.float().sigmoid())
    return scores.argmax(0)


def panoptic_inference(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    is_thing: torch.Tensor,
    config: PostProcessConfig = PostProcessConfig(),
) -> PanopticPrediction:
    """Mask2Former panoptic inference for one image (inputs at the output resolution)."""
    num_classes = class_probs.shape[-1] - 1
    if config.keep_rule == "reference":
        scores, labels = class_probs.float().max(-1)
        keep = (labels != num_classes) & (scores > config.object_mask_threshold)
    else:
        scores, labels = class_probs[:, :-1].float().max(-1)
        keep = (1.0 - class_probs[:, -1].float()) > config.keep_threshold
    scores, labels = scores[keep], labels[keep]
    masks = mask_logits[keep].float().sigmoid()
    height, width = mask_logits.shape[-2:]
    segments = torch.full((height, width), -1, dtype=torch.long, device=mask_logits.device)
    out_labels: list[int] = []
    out_scores: list[float] = []
    if masks.shape[0] == 0:
        return PanopticPrediction(segments, labels.new_zeros(0), scores.new_zeros(0))

    winner = (scores[:, None, None] * masks).argmax(0).flatten()
    binary = (masks >= 0.5).flatten(1)
    q = masks.shape[0]
    winner_inside = binary.gather(0, winner[None])[0]  # the winning query's own mask covers the pixel
    won_area = torch.bincount(winner[winner_inside], minlength=q)
    win_anywhere = torch.bincount(winner, minlength=q)
    own_area = binary.sum(1)
    stuff_segment: dict[int, int] = {}
    flat = segments.view(-1)
    for k in range(q):
        label = int(labels[k])
        if win_anywhere[k] == 0 or own_area[k] == 0 or won_area[k] == 0:
            continue
        if win_anywhere[k] / own_area[k] < config.overlap_threshold:
            continue
        pixels = (winner == k) & binary[k]
        if not bool(is_thing[label]) and label in stuff_segment:
            flat[pixels] = stuff_segment[label]
            continue
        index = len(out_labels)
        if not bool(is_thing[label]):
            stuff_segment[label] = index
        flat[pixels] = index
        out_labels.append(label)
        out_scores.append(float(scores[k]))
    return PanopticPrediction(
        segments,
        torch.tensor(out_labels, dtype=torch.long, device=segments.device),
        torch.tensor(out_scores, dtype=torch.float, device=segments.device),
    )


def instance_inference(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    is_thing: torch.Tensor,
    config: PostProcessConfig = PostProcessConfig(),
) -> InstancePrediction:
    """Mask2Former instance inference: top-k (query, thing class) pairs rescored by mask quality."""
    num_queries, k1 = class_probs.shape
    num_classes = k1 - 1
    probs = class_probs[:, :-1].float() * is_thing[None, :].to(class_probs.device)
    topk = min(config.topk_instances, probs.numel())
    scores, flat_index = probs.flatten().topk(topk)
    labels = flat_index % num_classes
    query = flat_index // num_classes
    positive = scores > 0
    scores, labels, query = scores[positive], labels[positive], query[positive]
    logits = mask_logits[query].float()
    masks = logits > 0
    mask_quality = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    scores = scores * mask_quality
    order = scores.argsort(descending=True)
    return InstancePrediction(masks[order], labels[order], scores[order])


def infer(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    is_thing: torch.Tensor,
    tasks: tuple[str, ...] = ("panoptic", "semantic", "instance"),
    config: PostProcessConfig = PostProcessConfig(),
) -> Prediction:
    """Run the requested tasks on logits already at the original size (``float[Q, H0, W0]``)."""
    prediction = Prediction()
    if "semantic" in tasks:
        prediction.semantic = semantic_inference(mask_logits, class_probs)
    if "panoptic" in tasks:
        prediction.panoptic = panoptic_inference(mask_logits, class_probs, is_thing, config)
    if "instance" in tasks:
        prediction.instance = instance_inference(mask_logits, class_probs, is_thing, config)
    return prediction
