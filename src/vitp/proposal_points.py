"""Points of a proposer's proposals: the inference point of each proposal, and training points
labelled by matching proposals to the ground truth (with a "no object" label).

Coordinates follow ``vitp.points``: (y, x) in [-1, 1] relative to each image's valid region.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from vitp.classifiers.glimpse import PointMasks
from vitp.points import point_to_pixel
from vitp.postprocess import crop_and_resize
from vitp.structures import Batch, Proposals


def match_segments(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ground-truth segment of each predicted mask: ``(iou float[Q], index long[Q])``.

    ``pred bool[Q, P]`` and ``gt bool[N, P]`` are flattened masks on the same pixels (N >= 1).
    """
    pred, gt = pred.float(), gt.float()
    inter = pred @ gt.T
    union = pred.sum(1, keepdim=True) + gt.sum(1)[None] - inter
    return (inter / union.clamp(min=1)).max(1)


def valid_cells(
    mask_logits: torch.Tensor,
    valid_sizes: torch.Tensor | Sequence[Sequence[int]],
    frame_size: tuple[int, int],
    mask_valid_sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid region of each image in mask cells, ``float64[B, 2]``, and the mask cells whose
    centre lies inside it, ``bool[B, h, w]`` (see :func:`select_points` for the arguments)."""
    h, w = mask_logits.shape[-2:]
    dev = mask_logits.device
    if mask_valid_sizes is not None:
        region = torch.as_tensor(mask_valid_sizes, device=dev).double()
    else:
        vs = torch.as_tensor(valid_sizes, device=dev).double()
        H, W = frame_size
        region = vs * torch.tensor([h / H, w / W], device=dev, dtype=torch.float64)
    n_rows = (region[:, 0] - 0.5).ceil().clamp(1, h).long()  # cells with centre < region
    n_cols = (region[:, 1] - 0.5).ceil().clamp(1, w).long()
    ok = (torch.arange(h, device=dev)[None, :, None] < n_rows[:, None, None]) & (
        torch.arange(w, device=dev)[None, None, :] < n_cols[:, None, None]
    )
    return region, ok


def select_points(
    mask_logits: torch.Tensor,
    valid_sizes: torch.Tensor | Sequence[Sequence[int]],
    frame_size: tuple[int, int],
    top_k: int = 1,
    mask_valid_sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The most confident location(s) of each proposal: ``float[B, Q, top_k, 2]`` (y, x).

    ``mask_logits float[B, Q, h, w]`` cover the whole padded frame of size ``frame_size`` (H, W);
    only mask cells whose centre lies inside the image's valid region (``valid_sizes long[B, 2]`` in
    frame pixels, or ``mask_valid_sizes`` directly in mask cells) are candidates. Points are cell
    centres in the valid-region convention of this module, ordered by decreasing logit.
    """
    w = mask_logits.shape[-1]
    region, ok = valid_cells(mask_logits, valid_sizes, frame_size, mask_valid_sizes)
    if top_k > int(ok.flatten(1).sum(1).min()):
        raise ValueError(f"top_k={top_k} exceeds the number of valid mask cells")
    logits = mask_logits.masked_fill(~ok[:, None], float("-inf"))
    idx = logits.flatten(2).topk(top_k, dim=-1).indices  # [B, Q, k]
    r, c = (idx // w).double(), (idx % w).double()
    y = (2 * (r + 0.5) / region[:, 0, None, None] - 1).clamp(-1, 1)
    x = (2 * (c + 0.5) / region[:, 1, None, None] - 1).clamp(-1, 1)
    return torch.stack([y, x], dim=-1).to(mask_logits.dtype if mask_logits.is_floating_point() else torch.float32)


def valid_region_logits(proposals: Proposals, batch: Batch, index: int) -> torch.Tensor:
    """Image ``index``'s mask logits ``[Q, h, w]`` on the valid region of the input frame (the pixels
    of ``Target.masks[:, :h, :w]``)."""
    logits = proposals.mask_logits[index].detach().float()
    h, w = batch.targets[index].valid_size
    if proposals.valid_sizes is not None:
        return crop_and_resize(logits, tuple(proposals.valid_sizes[index].tolist()), (h, w))
    return crop_and_resize(logits, (h, w), (h, w), tuple(batch.images.shape[-2:]))


def _cell_share(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """``float[N, h, w]``: the share of each ``stride``-pixel cell inside ``bool[N, h, w]`` masks (area
    pooling), upsampled bilinearly back to ``h x w``."""
    h, w = masks.shape[-2:]
    cells = F.avg_pool2d(masks[None].float(), stride, ceil_mode=True)
    return F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[0]


def coarsen_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """``bool[N, h, w]`` masks as a proposer with ``stride``-pixel mask cells draws them: the share of
    each cell inside, upsampled and thresholded at 0.5 (rounded corners, no detail below the cell
    size). ``stride`` 1 returns the masks unchanged."""
    if stride <= 1 or len(masks) == 0:
        return masks
    return _cell_share(masks, stride) > 0.5


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


def ground_truth_point_masks(batch: Batch, points: torch.Tensor, coarsen: int = 1, jitter: float = 0.0) -> PointMasks:
    """The ground-truth segment under each point (``points float[B, P, 2]``, -1 where no segment or
    a padding point), with each image's masks on its valid region: what a mask-aware classifier reads
    for points sampled from ground-truth masks. ``coarsen > 1`` passes the masks through
    :func:`coarsen_masks`, ``jitter > 0`` through :func:`jitter_masks` with that probability (the
    segment under each point is found on the exact masks)."""
    masks, index = [], torch.full(points.shape[:2], -1, dtype=torch.long, device=points.device)
    for i, target in enumerate(batch.targets):
        h, w = target.valid_size
        stack = target.masks[:, :h, :w]
        masks.append(jitter_masks(coarsen_masks(stack, coarsen), jitter))
        if len(stack) == 0:
            continue
        rows, cols = point_to_pixel(points[i], (h, w))
        hit = stack[:, rows.to(stack.device), cols.to(stack.device)]  # [N, P]
        found = hit.any(0).to(points.device)
        index[i] = torch.where(found, hit.float().argmax(0).to(points.device), index[i])
    return PointMasks(masks, index)


def point_components(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``bool[Q, h, w]`` masks (on an image's valid region) each cut to its 8-connected part under
    its point (``points float[Q, 2]``, this module's convention); a mask its point misses is kept
    whole. A proposal's stray pixels far from its segment would otherwise stretch the box a
    box-framed glimpse reads (``PointGlimpse(fit_box=True)``): exact ground-truth masks have none."""
    q, h, w = masks.shape
    if q == 0:
        return masks
    rows, cols = (t.tolist() for t in point_to_pixel(points, (h, w)))
    array = masks.detach().cpu().numpy()
    out = masks.clone()
    eight = np.ones((3, 3), dtype=bool)
    for k in range(q):
        if not array[k, rows[k], cols[k]]:
            continue
        labels, count = ndimage.label(array[k], structure=eight)
        if count > 1:
            out[k] = torch.from_numpy(labels == labels[rows[k], cols[k]]).to(masks.device)
    return out


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
