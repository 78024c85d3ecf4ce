"""Training targets built from ground truth and proposals: the ground-truth mask under each sampled
point (optionally with proposer-like errors), and a frozen proposer's proposals as extra training
points labelled with the class they match or "no object". Inference geometry lives in
``vitp.proposal_geometry``; what is trained on is chosen by ``vitp.training.point_supervision``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vitp.points import point_to_pixel
from vitp.proposal_geometry import match_segments, select_points, valid_region_logits
from vitp.structures import Batch, PointMasks, Proposals


def _cell_share(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """``float[N, h, w]``: the share of each ``stride``-pixel cell inside ``bool[N, h, w]`` masks (area
    pooling), upsampled bilinearly back to ``h x w``."""
    h, w = masks.shape[-2:]
    cells = F.avg_pool2d(masks[None].float(), stride, ceil_mode=True)
    return F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[0]


def _shift(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``mask [h, w]`` moved by (dy, dx) pixels, zeros coming in."""
    h, w = mask.shape
    out = torch.zeros_like(mask)
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = mask[max(-dy, 0): h - max(dy, 0),
                                                                        max(-dx, 0): w - max(dx, 0)]
    return out


def jitter_masks(masks: torch.Tensor, probability: float, max_cell: int = 16, max_shift: int = 4) -> torch.Tensor:
    """``bool[N, h, w]`` masks with proposer-like errors: each mask, with ``probability``, is drawn
    with a cell of random size (1 to ``max_cell`` pixels: area pooling, bilinear upsampling), cut at
    a random level in [0.3, 0.7] (so it grows or shrinks) and moved by up to ``max_shift`` pixels.
    Draws come from torch's global RNG (seeded per training step by ``ViTPModule``). A mask that
    would vanish stays as it was."""
    n, h, w = masks.shape
    if probability <= 0 or n == 0:
        return masks
    chosen = torch.rand(n) < probability
    cells = torch.randint(1, max_cell + 1, (n,))
    levels = torch.empty(n).uniform_(0.3, 0.7)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2))
    out = masks.clone()
    for k in chosen.nonzero()[:, 0].tolist():
        cell = int(cells[k])
        share = _cell_share(masks[k : k + 1], cell)[0] if cell > 1 else masks[k].float()
        drawn = _shift(share > float(levels[k]), int(shifts[k, 0]), int(shifts[k, 1]))
        if bool(drawn.any()):
            out[k] = drawn
    return out


def ground_truth_point_masks(batch: Batch, points: torch.Tensor, jitter: float = 0.0) -> PointMasks:
    """The ground-truth segment under each point (``points float[B, P, 2]``, -1 where no segment or
    a padding point), with each image's masks on its valid region: what a mask-aware classifier reads
    for points sampled from ground-truth masks. ``jitter > 0`` passes the masks through
    :func:`jitter_masks` with that probability (the segment under each point is found on the exact
    masks)."""
    masks, index = [], torch.full(points.shape[:2], -1, dtype=torch.long, device=points.device)
    for i, target in enumerate(batch.targets):
        h, w = target.valid_size
        stack = target.masks[:, :h, :w]
        masks.append(jitter_masks(stack, jitter))
        if len(stack) == 0:
            continue
        rows, cols = point_to_pixel(points[i], (h, w))
        hit = stack[:, rows.to(stack.device), cols.to(stack.device)]  # [N, P]
        found = hit.any(0).to(points.device)
        index[i] = torch.where(found, hit.float().argmax(0).to(points.device), index[i])
    return PointMasks(masks, index)


def matched_proposal_index(
    own: torch.Tensor, proposal_masks: torch.Tensor, gt_masks: torch.Tensor, offset: int,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """One image's point mask indices ``own long[P]`` (into ``gt_masks``; -1 = none) with each
    ground-truth point moved to the proposal that matches its segment best (IoU >=
    ``iou_threshold``), if any: ``long[P]``.

    ``proposal_masks bool[Q, h, w]`` and the exact ``gt_masks bool[N, h, w]`` lie on the image's
    valid region; the proposals sit at ``offset`` onwards in the image's mask stack. A point then
    reads the mask it would read at test time: the proposal's outline, with the proposer's errors,
    instead of the exact one.
    """
    if len(gt_masks) == 0 or len(proposal_masks) == 0:
        return own
    iou, best = match_segments(gt_masks.flatten(1).to(proposal_masks.device), proposal_masks.flatten(1))
    iou, best = iou.to(own.device), best.to(own.device)
    safe = own.clamp(min=0)
    swap = (own >= 0) & (iou[safe] >= iou_threshold)
    return torch.where(swap, offset + best[safe], own)


def proposal_point_targets(
    proposals: Proposals, batch: Batch, num_classes: int, iou_threshold: float = 0.5,
    region_logits: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training points from a (frozen) proposer's own proposals, with a "no object" label.

    Each proposal gives its inference point (argmax of its mask logits, as at test time) labelled
    with the class of the non-crowd ground-truth segment it matches (IoU >= ``iou_threshold``,
    measured on the valid region of the input frame), or ``num_classes`` ("no object") when it
    matches none. A proposal whose best match is a crowd region is ignored (label -1): it is not
    wrong. Returns ``points float[B, Q, 2]`` and ``labels long[B, Q]``. ``region_logits``: each
    image's ``valid_region_logits`` when the caller has them already (else computed here).
    """
    frame = tuple(batch.images.shape[-2:])
    valid = batch.valid_tensor()
    logits = proposals.mask_logits.detach().float()
    points = select_points(logits, valid, frame, 1, proposals.valid_sizes)[:, :, 0]
    labels = torch.full(points.shape[:2], num_classes, dtype=torch.long, device=points.device)
    for i, target in enumerate(batch.targets):
        h, w = target.valid_size
        pred = valid_region_logits(proposals, batch, i) if region_logits is None else region_logits[i]
        gt = target.masks[:, :h, :w].to(pred.device)
        if len(gt) == 0:
            continue
        iou, best = match_segments((pred > 0).flatten(1), gt.flatten(1))
        matched = iou >= iou_threshold
        crowd = target.is_crowd.to(pred.device).bool()[best]
        labels[i, matched] = target.labels.to(pred.device)[best[matched]]
        labels[i, matched & crowd] = -1
    return points, labels
