"""A proposal's geometry at inference, in one place: its mask logits cropped to the valid region and
resized to the original frame, its inference point, the connected part under that point, and the
masks a mask-aware classifier reads. Training targets built from proposals (labels, matching for
supervision, jittered ground truth) live in ``vitp.training.point_targets``.

Coordinates follow ``vitp.points``: (y, x) in [-1, 1] relative to each image's valid region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vitp.cpu_ops import above, numpy_ok
from vitp.points import point_to_pixel
from vitp.upsampling import UpsampledLogits, crop_and_resize, crop_logits
from vitp.structures import Batch, PointLogits, PointMasks, Proposals


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
    idx = _untied_argmax(mask_logits, ok) if top_k == 1 else None
    if idx is None:
        logits = mask_logits.masked_fill(~ok[:, None], float("-inf"))
        idx = logits.flatten(2).topk(top_k, dim=-1).indices  # [B, Q, k]
    r, c = (idx // w).double(), (idx % w).double()
    y = (2 * (r + 0.5) / region[:, 0, None, None] - 1).clamp(-1, 1)
    x = (2 * (c + 0.5) / region[:, 1, None, None] - 1).clamp(-1, 1)
    return torch.stack([y, x], dim=-1).to(mask_logits.dtype if mask_logits.is_floating_point() else torch.float32)


def _untied_argmax(mask_logits: torch.Tensor, ok: torch.Tensor) -> torch.Tensor | None:
    """``long[B, Q, 1]``: each proposal's flat cell of highest logit among the ``ok`` cells (a top-left
    rectangle per image), found through numpy; None when that cannot be done or some maximum is
    tied or NaN, since topk picks among ties in its own order. On a CPU, torch's masked fill and
    topk over ``float[8, 50, 64, 64]`` take about 1 ms an image, numpy's argmax a tenth of that."""
    if not numpy_ok(mask_logits) or not mask_logits.is_floating_point():
        return None
    values, okn = mask_logits.detach().numpy(), ok.cpu().numpy()
    b, q, _, w = values.shape
    out = np.empty((b, q, 1), dtype=np.int64)
    for i in range(b):
        rows, cols = int(okn[i, :, 0].sum()), int(okn[i, 0].sum())
        crop = values[i, :, :rows, :cols].reshape(q, rows * cols)
        best = crop.argmax(1)
        if ((crop == crop[np.arange(q), best][:, None]).sum(1) != 1).any():
            return None
        out[i, :, 0] = best // cols * w + best % cols
    return torch.from_numpy(out).to(mask_logits.device)


def _crop_args(proposals: Proposals, batch: Batch, index: int,
               size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int] | None]:
    """``(valid_size, size, frame_size)`` for ``crop_and_resize`` / ``crop_logits``: image ``index``'s
    valid region, seen at ``size``. Proposals that state their valid region (``Proposals.valid_sizes``,
    in mask coordinates) give it with no frame; otherwise it is the input's valid region in the padded
    input frame."""
    if proposals.valid_sizes is not None:
        return tuple(proposals.valid_sizes[index].tolist()), size, None
    return tuple(batch.targets[index].valid_size), size, tuple(batch.images.shape[-2:])


def valid_region_logits(proposals: Proposals, batch: Batch, index: int) -> torch.Tensor:
    """Image ``index``'s mask logits ``[Q, h, w]`` on the valid region of the input frame (the pixels
    of ``Target.masks[:, :h, :w]``)."""
    logits = proposals.mask_logits[index].detach().float()
    return crop_and_resize(logits, *_crop_args(proposals, batch, index, tuple(batch.targets[index].valid_size)))


def original_size_logits(proposals: Proposals, batch: Batch, index: int) -> torch.Tensor:
    """Image ``index``'s mask logits with the padding removed, at its original size.

    Proposals that state their valid region (``Proposals.valid_sizes``, in mask coordinates) are
    cropped there; otherwise the input's valid region is mapped through the frame exactly, as
    :func:`vitp.postprocess.crop_and_resize` does (no rounding to whole mask pixels).
    """
    size = tuple(batch.targets[index].orig_size)
    return crop_and_resize(proposals.mask_logits[index], *_crop_args(proposals, batch, index, size))


def lazy_logits(proposals: Proposals, batch: Batch, index: int, size: tuple[int, int]) -> UpsampledLogits:
    """:func:`original_size_logits` seen at ``size`` band by band (``vitp.postprocess.UpsampledLogits``),
    never materialised at full size."""
    return crop_logits(proposals.mask_logits[index], *_crop_args(proposals, batch, index, size))


# A proposal counts as present when some mask logit the post-processing can read is at least this: it
# binarises at sigmoid >= 0.5 after bilinear resizing, which never exceeds the largest logit it blends,
# and sigmoid(-1e-6) < 0.5 in float32, so a proposal below it has no pixel in any task at any size.
PRESENT_LOGIT = -1e-6


def present_proposals(proposals: Proposals, batch: Batch) -> torch.Tensor:
    """``bool[B, Q]``: the proposals whose mask can have a pixel on their image's valid region at any
    output size: a logit >= :data:`PRESENT_LOGIT` among the mask cells that resizing the valid region
    reads (tested at the mask's own resolution; where the region ends inside a cell, one more row /
    column, so that a proposal judged empty surely is)."""
    rows = []
    for i in range(len(batch)):
        logits = proposals.mask_logits[i]
        h, w = logits.shape[-2:]
        valid, _, frame = _crop_args(proposals, batch, i, (h, w))
        frame = frame or (h, w)
        extent = [v * n / f for v, n, f in zip(valid, (h, w), frame)]
        rh, rw = (min(n, math.ceil(e) + (0 if float(e).is_integer() else 1)) for e, n in zip(extent, (h, w)))
        rows.append(logits[:, :rh, :rw].amax((1, 2)) >= PRESENT_LOGIT if len(logits) else
                    torch.zeros(0, dtype=torch.bool, device=logits.device))
    return torch.stack(rows)


@dataclass
class ProposalPick:
    """The present proposals of each image, padded to one count: ``index long[B, P]`` (P = the most
    any image has; an image with fewer repeats one of its own, or proposal 0), ``present bool[B, Q]``."""

    index: torch.Tensor
    present: torch.Tensor

    @classmethod
    def of(cls, present: torch.Tensor) -> "ProposalPick":
        counts = present.sum(1)
        width = int(counts.max()) if len(counts) else 0
        order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :width]  # present first
        first = order[:, :1] if width else order
        index = torch.where(torch.arange(width, device=present.device)[None] < counts[:, None], order, first)
        return cls(index, present)

    @property
    def real(self) -> torch.Tensor:
        """``bool[B, P]``: False where ``index`` is padding."""
        return torch.arange(self.index.shape[1], device=self.index.device)[None] < self.present.sum(1)[:, None]

    def scatter(self, logits: torch.Tensor) -> PointLogits:
        """``logits float[B, P, C]`` of the picked proposals back at their places among all ``Q``."""
        b, q = self.present.shape
        out = logits.new_zeros(b, q, logits.shape[-1])
        real = self.real.to(logits.device)
        rows = torch.arange(b, device=logits.device)[:, None].expand_as(self.index)
        out[rows[real], self.index[real]] = logits[real]
        return PointLogits(out, self.present)


def capped_size(size: tuple[int, int], max_image_side: int | None) -> tuple[int, int]:
    """``size`` scaled down so that its long side is at most ``max_image_side`` (None: unchanged)."""
    h, w = size
    if max_image_side is None or max(h, w) <= max_image_side:
        return (h, w)
    scale = max_image_side / max(h, w)
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def point_components(masks: torch.Tensor, points: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``bool[Q, h, w]`` masks (on an image's valid region) each cut to its 8-connected part under
    its point (``points float[Q, 2]``, this module's convention); a mask its point misses is kept
    whole. A proposal's stray pixels far from its segment would otherwise stretch the box a
    box-framed glimpse reads (``PointGlimpse(fit_box=True)``): exact ground-truth masks have none.
    ``inplace``: cut ``masks`` themselves (a caller's own fresh masks: no copy of the stack)."""
    q, h, w = masks.shape
    if q == 0:
        return masks
    rows, cols = (t.tolist() for t in point_to_pixel(points, (h, w)))
    array = masks.detach().cpu().contiguous().numpy().view(np.uint8)
    out = masks if inplace else None
    filled = np.zeros((h + 2, w + 2), np.uint8)  # OpenCV's fill mask: one pixel of border around the image
    for k in range(q):
        if not array[k, rows[k], cols[k]]:
            continue
        # The 8-connected part under the point by a flood fill from it, which visits that part only
        # (3x cheaper than labelling every part with cv2.connectedComponents); the image is only
        # read (FLOODFILL_MASK_ONLY), the part is written as 1 into `filled`.
        filled.fill(0)
        area = cv2.floodFill(array[k], filled, (cols[k], rows[k]), 0, flags=8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))[0]
        if area < np.count_nonzero(array[k]):  # the mask has other parts
            if out is None:
                out = masks.clone()
            out[k] = torch.from_numpy(filled[1:-1, 1:-1].view(np.bool_)).to(masks.device)
    return masks if out is None else out


def proposal_point_masks(batch: Batch, proposals: Sequence[Proposals], points: Sequence[torch.Tensor],
                         points_per_proposal: int = 1, components: bool = True,
                         regions: Sequence[Sequence[torch.Tensor]] | None = None) -> PointMasks:
    """The masks a mask-aware classifier reads for proposal points: each image's proposals of every
    set in ``proposals`` (binarised at logit 0 on the valid region), in the order of their
    ``points`` (per set ``float[B, Q * k, 2]``, ``k = points_per_proposal`` consecutive points per
    proposal). With ``components`` each proposal is cut to its connected part under its first point
    (:func:`point_components`). ``regions``: per image, per set, the :func:`valid_region_logits`
    the caller has already (else computed here). Used at inference and for the proposal points of
    training alike."""
    k = points_per_proposal
    stacks, index = [], []
    device = batch.images.device
    for i in range(len(batch)):
        logits = regions[i] if regions is not None else [valid_region_logits(p, batch, i) for p in proposals]
        masks = [above(r) for r in logits]  # fresh tensors: cut in place, and not copied for one set
        if components:  # cut at each proposal's first (most confident) point
            masks = [point_components(m, pts[i, ::k], inplace=True) for m, pts in zip(masks, points)]
        count = sum(len(m) for m in masks)
        stacks.append(masks[0].to(device) if len(masks) == 1 else torch.cat([m.to(device) for m in masks]))
        index.append(torch.arange(count, device=device).repeat_interleave(k))
    return PointMasks(stacks, torch.stack(index))
