"""Where an overlay's class-name labels go: each segment's most interior pixel (:func:`label_anchors`)
and boxes near those anchors that never overlap (:func:`place_labels`). ``vitp.visualize`` draws them."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

ANCHOR_BOX_SIDE = 256  # segments with a longer box are searched on blocks of pixels (label_anchors)


def segment_ids(segments: np.ndarray, num_segments: int) -> np.ndarray:
    """``int32`` ids ``1 + segment index`` of a segment map, 0 for void (-1) and values out of
    ``0..num_segments-1`` (the labels ``scipy.ndimage.find_objects`` reads). A map already in range
    costs one conversion (5x less than masking it on a 12 MP map)."""
    if segments.size == 0 or (segments.min() >= -1 and segments.max() < num_segments):
        ids = segments.astype(np.int32)
        ids += 1
        return ids
    return np.where((segments >= 0) & (segments < num_segments), segments + 1, 0).astype(np.int32)


def _pure_blocks(ids: np.ndarray, step: int) -> np.ndarray:
    """``int32[ceil(H / step), ceil(W / step)]``: the id filling each ``step x step`` block of ``ids``
    entirely, 0 for blocks of several ids (or void, or past the image's edge)."""
    h, w = ids.shape
    rows, cols = -(-h // step), -(-w // step)
    padded = np.zeros((rows * step, cols * step), dtype=ids.dtype)
    padded[:h, :w] = ids
    lo = padded.reshape(rows, step, cols * step).min(1).reshape(rows, cols, step).min(2)
    hi = padded.reshape(rows, step, cols * step).max(1).reshape(rows, cols, step).max(2)
    return np.where(lo == hi, lo, 0)


def _most_interior(mask: np.ndarray) -> tuple[int, int]:
    """The first pixel in row order of ``bool[h, w]`` farthest (chamfer) from any pixel outside it."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(y) - 1, int(x) - 1


def label_anchors(segments: np.ndarray, num_segments: int,
                  max_box_side: int | None = ANCHOR_BOX_SIDE) -> list[tuple[int, int] | None]:
    """Per segment index, its most interior pixel ``(y, x)`` (farthest from the segment's border),
    or None when the segment has no pixel.

    On an image longer than ``max_box_side``, a segment whose box is longer too is searched on
    blocks of ``s x s`` pixels (``s`` brings the image's long side to at most ``max_box_side``) that
    it fills entirely, so thin cuts through it still count as border: its anchor is the centre of
    its most interior block, one of its own pixels, within a few ``s`` of the full search's distance
    from the border (a label is placed there; on a 12 MP photo the full search took 0.5 s per
    overlay). A segment that fills no block, and ``max_box_side=None``, get the full search."""
    # Each segment is measured inside its bounding box (found for all segments in one pass) with a
    # ring of zeros around it: every pixel just outside a tight box is outside the segment, so the
    # chamfer distance (a shortest path) to the nearest outside pixel, and its first maximum in row
    # order, are those of the whole image, at the box's cost rather than the image's per segment.
    out: list[tuple[int, int] | None] = [None] * num_segments
    ids = segment_ids(np.asarray(segments), num_segments)
    boxes = ndimage.find_objects(ids, max_label=num_segments)
    step = 1 if max_box_side is None else -(-max(ids.shape, default=0) // max_box_side)
    if step > 1:
        pure = _pure_blocks(ids, step)
        block_boxes = ndimage.find_objects(pure, max_label=num_segments)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        if step > 1 and block_boxes[i] is not None and max(s.stop - s.start for s in box) > max_box_side:
            rows, cols = block_boxes[i]
            y, x = _most_interior(pure[rows, cols] == i + 1)
            out[i] = ((rows.start + y) * step + step // 2, (cols.start + x) * step + step // 2)
        else:
            y, x = _most_interior(ids[box] == i + 1)
            out[i] = (y + box[0].start, x + box[1].start)
    return out


Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: Sequence[tuple[int, int] | None], sizes: Sequence[tuple[int, int]],
                 image_size: tuple[int, int], gap: int = 1) -> list[Box | None]:
    """Boxes for labels of ``sizes`` ``(w, h)`` near ``anchors`` ``(y, x)``, inside ``image_size``
    ``(H, W)``, no two overlapping (with ``gap`` pixels between). Greedy in the given order (put
    the most important first): each label takes the first free place among its anchor centred
    and then shifted by whole label heights / widths; None when the anchor is None or no place
    is free."""
    h, w = image_size
    placed: list[Box] = []
    out: list[Box | None] = []
    for anchor, (tw, th) in zip(anchors, sizes):
        box = None
        if anchor is not None and tw + 2 * gap <= w and th + 2 * gap <= h:
            y, x = anchor
            shifts = [(0, 0)] + [(dy * (th + 2 * gap), dx * (tw // 2 + gap))
                                 for r in (1, 2, 3) for dy, dx in ((-r, 0), (r, 0), (0, -r), (0, r), (-r, -r),
                                                                   (-r, r), (r, -r), (r, r))]
            for dy, dx in shifts:
                left = int(np.clip(x - tw / 2 + dx, gap, w - tw - gap))
                top = int(np.clip(y - th / 2 + dy, gap, h - th - gap))
                candidate = (left - gap, top - gap, left + tw + gap, top + th + gap)
                if not any(_overlaps(candidate, p) for p in placed):
                    box = candidate
                    break
        if box is not None:
            placed.append(box)
        out.append(box)
    return out
