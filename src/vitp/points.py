"""Training point samplers: ground-truth target -> points + labels (fine masks, coarse masks, boxes).

Points of a proposer's proposals live in ``vitp.proposal_geometry`` (inference points) and
``vitp.training.point_targets`` (no-object training points).

Coordinates are (y, x) in [-1, 1] relative to the *valid* image region of the input frame:
-1 / +1 are the region's top-left / bottom-right edges
(``align_corners=False`` convention), so a pixel centre (r, c) of a region of size (h, w) maps to
``y = (2 * r + 1) / h - 1``, ``x = (2 * c + 1) / w - 1``.

Every sampler returns ``points float[P, 2]`` and ``labels long[P]`` for one image; P is
``num_points`` when the image has at least one usable segment and 0 otherwise. Void pixels (no mask)
and crowd pixels are never sampled; results are deterministic given a ``torch.Generator``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vitp.cpu_ops import any_along
from vitp.structures import IGNORE_INDEX, Target


def pixel_to_point(rows: torch.Tensor, cols: torch.Tensor, valid_size: tuple[int, int]) -> torch.Tensor:
    """Pixel centres (rows, cols) of the valid region -> ``float[n, 2]`` (y, x) in [-1, 1]."""
    h, w = valid_size
    y = (2 * rows.float() + 1) / h - 1
    x = (2 * cols.float() + 1) / w - 1
    return torch.stack([y, x], dim=-1)


def point_to_pixel(points: torch.Tensor, valid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``float[..., 2]`` (y, x) in [-1, 1] -> the (rows, cols) ``long[...]`` of the valid-region pixel
    each point falls in (the inverse of :func:`pixel_to_point`, clamped to the region)."""
    h, w = valid_size
    rows = ((points[..., 0] + 1) / 2 * h - 0.5).round().long().clamp(0, h - 1)
    cols = ((points[..., 1] + 1) / 2 * w - 0.5).round().long().clamp(0, w - 1)
    return rows, cols


class PointSampler:
    """Base class of training point samplers.

    ``sampler(target, generator)`` returns ``points float[P, 2]`` and ``labels long[P]`` for one
    image (P may vary; the collate function pads with label -1). Ignore (void) and crowd pixels are
    never sampled.
    """

    def __init__(self, num_points: int = 100) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points = num_points

    def __call__(
        self, target: Target, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- helpers
def _empty(device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, 2, device=device), torch.zeros(0, dtype=torch.long, device=device)


def _randint(high: torch.Tensor | int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` uniform integers in [0, high) (``high`` scalar or per-draw tensor), drawn on the CPU."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64).cpu()
    return (u * high_t).floor().long().clamp_max((high_t - 1).clamp_min(0).long())


def usable_masks(target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-crowd masks cropped to the valid region with crowd pixels removed, and their labels.

    Returns ``masks bool[M, h, w]`` (only non-empty ones) and ``labels long[M]``.
    """
    h, w = target.valid_size
    masks = target.masks[:, :h, :w].bool()
    crowd = target.is_crowd.bool().to(masks.device)
    keep = ~crowd
    out = masks[keep]
    if crowd.any():
        out = out & ~masks[crowd].any(0, keepdim=True)
    labels = target.labels.to(masks.device)[keep]
    nonempty = out.flatten(1).any(1)
    return out[nonempty], labels[nonempty]


def _sample_pixels(
    regions: torch.Tensor, choice: torch.Tensor, generator: torch.Generator | None, valid_size: tuple[int, int]
) -> torch.Tensor:
    """For each entry of ``choice`` (index into ``regions bool[M, h, w]``) a uniform pixel of that
    region, as points ``float[len(choice), 2]``."""
    w = regions.shape[-1]
    points = torch.zeros(len(choice), 2, device=regions.device)
    for m in torch.unique(choice).tolist():
        sel = (choice == m).nonzero(as_tuple=True)[0]
        flat = regions[m].flatten().nonzero(as_tuple=True)[0]
        pick = flat[_randint(len(flat), len(sel), generator).to(flat.device)]
        points[sel] = pixel_to_point(pick // w, pick % w, valid_size)
    return points


def _class_balanced(
    masks: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator | None, valid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(masks) == 0:
        return _empty(masks.device)
    classes = torch.unique(labels)
    regions = torch.stack([masks[labels == c].any(0) for c in classes])
    choice = _randint(len(classes), n, generator).to(masks.device)
    return _sample_pixels(regions, choice, generator, valid_size), classes[choice]


def _per_segment(
    masks: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator | None, valid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(masks) == 0:
        return _empty(masks.device)
    choice = _randint(len(masks), n, generator).to(masks.device)
    return _sample_pixels(masks, choice, generator, valid_size), labels[choice]


# ----------------------------------------------------------------------------- samplers
class ClassBalancedSampler(PointSampler):
    """Reference sampler: per point a class drawn uniformly among the (non-crowd) classes present,
    then a uniformly random pixel of that class."""

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        masks, labels = usable_masks(target)
        return _class_balanced(masks, labels, self.num_points, generator, target.valid_size)


class InstanceSampler(PointSampler):
    """Per point a (non-crowd) segment drawn uniformly, then a uniformly random pixel of it."""

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        masks, labels = usable_masks(target)
        return _per_segment(masks, labels, self.num_points, generator, target.valid_size)


def erode(masks: torch.Tensor, margin: int) -> torch.Tensor:
    """Erode ``bool[M, h, w]`` masks by ``margin`` pixels (square structuring element; the image
    border does not erode)."""
    if margin <= 0 or masks.numel() == 0:
        return masks
    k = 2 * margin + 1
    outside = F.max_pool2d((~masks).float()[:, None], k, stride=1, padding=margin)[:, 0]
    return outside < 0.5


class CoarseMaskSampler(PointSampler):
    """Points only where coarse labels exist.

    Coarse annotation is simulated from fine masks by eroding each segment by ``margin`` pixels
    (a polygon-like interior; segments that vanish are unlabelled, as in coarse datasets). A real
    coarse label map can be passed instead: ``sampler(target, generator, coarse_labels=long[h, w])``
    (valid-region or input-frame size, ``ignore_index`` = unlabelled). Points are drawn class-balanced
    (``class_balanced=True``) or per segment.
    """

    def __init__(self, num_points: int = 100, margin: int = 5, class_balanced: bool = True,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_points)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.class_balanced = class_balanced
        self.ignore_index = ignore_index

    def __call__(self, target: Target, generator: torch.Generator | None = None,
                 coarse_labels: torch.Tensor | None = None):
        h, w = target.valid_size
        if coarse_labels is not None:
            lab = coarse_labels[:h, :w]
            lab = lab.to(target.masks.device)
            # crowd pixels stay excluded even when a coarse map covers them
            crowd = target.masks[target.is_crowd.bool(), :h, :w].any(0) if target.is_crowd.any() else None
            ok = (lab != self.ignore_index) & (lab >= 0)
            if crowd is not None:
                ok &= ~crowd
            classes = torch.unique(lab[ok])
            masks = torch.stack([ok & (lab == c) for c in classes]) if len(classes) else lab.new_zeros(0, h, w).bool()
            return _class_balanced(masks, classes, self.num_points, generator, target.valid_size)
        masks, labels = usable_masks(target)
        masks = erode(masks, self.margin)
        keep = masks.flatten(1).any(1)
        masks, labels = masks[keep], labels[keep]
        fn = _class_balanced if self.class_balanced else _per_segment
        return fn(masks, labels, self.num_points, generator, target.valid_size)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of ``bool[M, h, w]`` masks as ``long[M, 4]`` = (y0, x0, y1, x1), inclusive pixel
    indices; rows are y, columns are x. An empty mask's box is (big, big, -1, -1), ``big = max(h, w)``."""
    big = max(masks.shape[1], masks.shape[2])
    if masks.device.type == "cpu" and masks.dtype == torch.bool and not torch.jit.is_tracing():
        # OpenCV's bounding rectangle of each mask's non-zero pixels: 0.15 ms for bool[50, 256, 256]
        # against 1-1.3 ms for the row / column maxima below (2-core AMD EPYC, one thread)
        array = masks.contiguous().numpy().view(np.uint8)
        boxes = np.array([cv2.boundingRect(m) for m in array], dtype=np.int64).reshape(-1, 4)  # x, y, w, h
        out = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 1] + boxes[:, 3] - 1, boxes[:, 0] + boxes[:, 2] - 1], 1)
        out[boxes[:, 2] == 0] = (big, big, -1, -1)
        return torch.from_numpy(out)
    rows = any_along(masks, 2)  # [M, h]
    cols = any_along(masks, 1)  # [M, w]
    ar_h = torch.arange(masks.shape[1], device=masks.device)
    ar_w = torch.arange(masks.shape[2], device=masks.device)
    y0 = torch.where(rows, ar_h, big).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, big).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    return torch.stack([y0, x0, y1, x1], dim=1)


class BoxSampler(PointSampler):
    """Box supervision: the tight box of each (thing) segment; points drawn uniformly among the
    pixels of the box's central ``center_fraction`` (per side) and labelled with the box class.

    Boxes are drawn uniformly. ``thing_classes``: only boxes of these classes (None = all). Pixels
    of crowd regions, and void pixels unless ``allow_void``, are excluded from the candidates.
    """

    def __init__(self, num_points: int = 100, center_fraction: float = 0.5,
                 thing_classes: list[int] | None = None, allow_void: bool = False) -> None:
        super().__init__(num_points)
        if not 0 < center_fraction <= 1:
            raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
        self.center_fraction = center_fraction
        self.thing_classes = thing_classes
        self.allow_void = allow_void

    def central_regions(self, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate pixels ``bool[M, h, w]`` of each box's centre and the box labels."""
        h, w = target.valid_size
        masks, labels = usable_masks(target)
        if self.thing_classes is not None and len(masks):
            keep = torch.isin(labels, torch.as_tensor(self.thing_classes, device=labels.device))
            masks, labels = masks[keep], labels[keep]
        if len(masks) == 0:
            return masks, labels
        allowed = torch.ones(h, w, dtype=torch.bool, device=masks.device)
        if target.is_crowd.any():
            allowed &= ~target.masks[target.is_crowd.bool(), :h, :w].any(0)
        if not self.allow_void:
            allowed &= usable_masks(target)[0].any(0)
        boxes = mask_boxes(masks).float()
        f = self.center_fraction
        ys = torch.arange(h, device=masks.device).float() + 0.5
        xs = torch.arange(w, device=masks.device).float() + 0.5
        regions = []
        for y0, x0, y1, x1 in boxes.tolist():
            cy, cx = (y0 + y1 + 1) / 2, (x0 + x1 + 1) / 2
            hh, hw = (y1 + 1 - y0) * f / 2, (x1 + 1 - x0) * f / 2
            ry = (ys >= cy - hh) & (ys <= cy + hh)
            rx = (xs >= cx - hw) & (xs <= cx + hw)
            if not ry.any():
                ry[min(int(cy), h - 1)] = True
            if not rx.any():
                rx[min(int(cx), w - 1)] = True
            regions.append(ry[:, None] & rx[None, :] & allowed)
        regions = torch.stack(regions)
        keep = regions.flatten(1).any(1)
        return regions[keep], labels[keep]

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        regions, labels = self.central_regions(target)
        return _per_segment(regions, labels, self.num_points, generator, target.valid_size)


class MixedSampler(PointSampler):
    """Per image, one of ``samplers`` drawn with probabilities proportional to ``weights``."""

    def __init__(self, samplers: list[PointSampler], weights: list[float] | None = None) -> None:
        if not samplers:
            raise ValueError("MixedSampler needs at least one sampler")
        weights = [1.0] * len(samplers) if weights is None else list(weights)
        if len(weights) != len(samplers) or any(x < 0 for x in weights) or sum(weights) <= 0:
            raise ValueError(f"bad weights {weights} for {len(samplers)} samplers")
        super().__init__(max(s.num_points for s in samplers))
        self.samplers = list(samplers)
        self.weights = weights

    def __call__(self, target: Target, generator: torch.Generator | None = None):
        i = int(torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), 1, generator=generator))
        return self.samplers[i](target, generator)
