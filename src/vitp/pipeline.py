"""The two-stage inference path: proposals -> class probabilities of each variant -> predictions.

Variants, all computed from the same proposals in one pass:

* ``proposer``: the proposer's own classes (skipped for class-agnostic proposers);
* ``vitp``: the point classifier's classes fused with the proposer's (when a classifier is given);
* ``oracle``: each proposal takes the class of the ground-truth segment it overlaps best
  (IoU >= 0.5, else "no object"), the upper bound of any re-classifier on these masks.
"""

from __future__ import annotations

import torch
from torch import nn

from vitp.postprocess import PostProcessConfig, crop_and_resize, infer
from vitp.structures import Batch, Prediction, Proposals, Target


def original_size_logits(proposals: Proposals, batch: Batch, index: int) -> torch.Tensor:
    """Image ``index``'s mask logits with the padding removed, at its original size.

    Proposals that state their valid region (``Proposals.valid_sizes``, in mask coordinates) are
    cropped there; otherwise the input's valid region is mapped through the frame exactly, as
    :func:`vitp.postprocess.crop_and_resize` does (no rounding to whole mask pixels).
    """
    target = batch.targets[index]
    logits = proposals.mask_logits[index]
    if proposals.valid_sizes is not None:
        return crop_and_resize(logits, tuple(proposals.valid_sizes[index].tolist()), target.orig_size)
    return crop_and_resize(logits, target.valid_size, target.orig_size, tuple(batch.images.shape[-2:]))


def classify_proposals(
    classifier: nn.Module, batch: Batch, proposals: Proposals, top_k: int = 1
) -> torch.Tensor:
    """Point-classifier logits ``float[B, Q, K]`` of each proposal (mean over its top-k points)."""
    from vitp.points import select_points

    logits = proposals.mask_logits
    b, q = logits.shape[:2]
    valid = torch.tensor(batch.valid_sizes, dtype=torch.long, device=batch.images.device)
    points = select_points(logits, valid, tuple(batch.images.shape[-2:]), top_k, proposals.valid_sizes)
    point_logits = classifier(batch.images, points.reshape(b, q * top_k, 2), valid)
    return point_logits.reshape(b, q, top_k, -1).mean(2)


def oracle_class_probs(mask_logits: torch.Tensor, target: Target, num_classes: int) -> torch.Tensor:
    """``float[Q, K + 1]``: one-hot ground-truth class of the best-overlapping segment.

    ``mask_logits`` are one image's proposals at the original size; crowd segments count as
    matches too (a proposal covering a crowd region is not wrong).
    """
    q = mask_logits.shape[0]
    probs = mask_logits.new_zeros((q, num_classes + 1), dtype=torch.float)
    probs[:, -1] = 1.0
    n = len(target.labels)
    if q == 0 or n == 0:
        return probs
    pred = (mask_logits > 0).flatten(1).float()
    gt_index = target.segments.flatten()
    gt = torch.zeros((n, gt_index.numel()), device=pred.device)
    valid = gt_index >= 0
    gt[gt_index[valid], valid.nonzero()[:, 0]] = 1.0
    inter = pred @ gt.T
    union = pred.sum(1, keepdim=True) + gt.sum(1)[None] - inter
    iou = inter / union.clamp(min=1)
    best_iou, best = iou.max(1)
    matched = best_iou >= 0.5
    probs[matched, -1] = 0.0
    probs[matched, target.labels[best[matched]]] = 1.0
    return probs


def predict_variants(
    batch: Batch,
    proposals: Proposals,
    variant_probs: dict[str, torch.Tensor],
    is_thing: torch.Tensor,
    tasks: tuple[str, ...],
    config: PostProcessConfig,
    num_classes: int,
    oracle: bool = False,
) -> dict[str, list[Prediction]]:
    """Post-process every variant for every image (masks resized once per image)."""
    names = list(variant_probs) + (["oracle"] if oracle else [])
    out: dict[str, list[Prediction]] = {name: [] for name in names}
    for i, target in enumerate(batch.targets):
        logits = original_size_logits(proposals, batch, i)
        for name, probs in variant_probs.items():
            out[name].append(infer(logits, probs[i], is_thing, tasks, config))
        if oracle:
            probs = oracle_class_probs(logits, target, num_classes)
            out["oracle"].append(infer(logits, probs, is_thing, tasks, config))
    return out
