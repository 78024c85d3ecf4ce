"""COCO run-length encodings built from compact inputs, without a full-size mask per segment:
every segment of a label map in one pass, and a small mask seen at a larger size by nearest
neighbour (an instance prediction held at post-processing size). All equal ``pycocotools.mask.encode`` of the corresponding full-size mask (tested)."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from vitp.structures import InstancePrediction

__all__ = ["instance_rles", "label_map_rles", "mask_stack_rles", "nearest_resized_rle"]


def label_map_rles(labels: np.ndarray, values: Sequence[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO RLEs (``counts`` as bytes) and areas of ``labels == v`` for each ``v`` in ``values``, from
    one column-major pass over the label map ``int[H, W]`` (no ``H x W`` mask per value): each
    value's runs in COCO's column-major order become its uncompressed counts, compressed by
    pycocotools, so the RLEs equal ``mask_utils.encode`` of each mask."""
    h, w = labels.shape
    flat = np.ascontiguousarray(labels.T).reshape(-1)
    if flat.size == 0:
        return [mask_utils.frPyObjects({"size": [h, w], "counts": [0]}, h, w) for _ in values], [0] * len(values)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    ends = np.concatenate([starts[1:], [flat.size]])
    run_values = flat[starts]
    order = np.argsort(run_values, kind="stable")  # each value's runs together, in image order
    sorted_values = run_values[order]
    rles, areas = [], []
    for v in values:
        lo, hi = np.searchsorted(sorted_values, v), np.searchsorted(sorted_values, v, side="right")
        s, e = starts[order[lo:hi]], ends[order[lo:hi]]
        # counts alternate background / foreground run lengths, starting with background
        counts = np.empty(2 * len(s) + 1, dtype=np.int64)
        counts[0:-1:2] = s - np.concatenate([[0], e[:-1]])
        counts[1::2] = e - s
        counts[-1] = flat.size - (e[-1] if len(e) else 0)
        if counts[-1] == 0 and len(counts) > 1:  # pycocotools ends on the last run, without a 0
            counts = counts[:-1]
        rles.append(mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w))
        areas.append(int((e - s).sum()))
    return rles, areas


def _counts_rle(positions: np.ndarray, h: int, w: int) -> dict[str, Any]:
    """Compressed COCO RLE from the sorted column-major positions where the value changes (the
    first pixel counts as a change when it is 1): run lengths from 0 to ``h * w``, no trailing 0."""
    counts = np.diff(np.concatenate([[0], positions, [h * w]]))
    if len(counts) > 1 and counts[-1] == 0:  # pycocotools ends on the last run, without a 0
        counts = counts[:-1]
    return mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)


def mask_stack_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as bytes) of the ``bool[n, H, W]`` (C order) masks, equal to
    ``mask_utils.encode`` of their column-major copy, reading each mask only inside its bounding box:
    two ``any`` passes find the boxes, and only the box, framed by a 0 above and below each column,
    is transposed into COCO's column-major order and searched for value changes (a segment covering
    a fiftieth of the image costs about that share of a full-size transpose)."""
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    if n == 0:
        return []
    cols_touched, rows_touched = masks.any(axis=1), masks.any(axis=2)  # [n, W], [n, H]
    rles = []
    for i in range(n):
        cols, rows = np.flatnonzero(cols_touched[i]), np.flatnonzero(rows_touched[i])
        if cols.size == 0:
            rles.append(_counts_rle(np.zeros(0, np.int64), h, w))
            continue
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
        framed = np.zeros((x1 - x0, y1 - y0 + 2), dtype=bool)  # per column: 0, the box's rows, 0
        framed[:, 1:-1] = masks[i, y0:y1, x0:x1].T
        k = np.flatnonzero(framed[:, 1:] != framed[:, :-1])  # changes, column by column
        c, r = np.divmod(k, y1 - y0 + 1)
        positions = (x0 + c) * h + y0 + r
        if y0 == 0 and y1 == h:  # a column ending on 1 and the next starting on 1: no change there
            positions, seen = np.unique(positions, return_counts=True)
            positions = positions[seen == 1]
        rles.append(_counts_rle(positions, h, w))
    return rles


def nearest_resized_rle(mask: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """COCO RLE (counts as bytes) of ``bool[h, w]`` ``mask`` resized to ``size`` ``(H0, W0)`` by
    nearest neighbour (``F.interpolate``'s: source ``floor(dst * in / out)``, as
    ``InstancePrediction.mask``), built from the mask's own row transitions: nothing of size
    ``H0 x W0`` is made, so a mask held at post-processing size costs its size, not the photo's.

    In COCO's column-major order, output column ``x`` repeats source column ``xs[x]`` with each
    source row stretched over the output rows that read it; its value changes where the source
    column's does (mapped to output rows), and at the column's start where the previous column
    ended on another value.
    """
    h0, w0 = int(size[0]), int(size[1])
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    ys = np.arange(h0) * h // h0
    xs = np.arange(w0) * w // w0
    rows, first_out = np.unique(ys, return_index=True)  # source rows read, and the first output row of each
    # transitions lie inside the mask's bounding box (and on the read row just below it): only that
    # block is searched, so a small instance costs its box, not the whole mask
    cols = np.flatnonzero(mask.any(axis=0))
    filled = np.flatnonzero(mask.any(axis=1))
    ra, rb = (int(np.searchsorted(rows, filled[0])), int(np.searchsorted(rows, filled[-1], "right"))) if len(cols) else (0, 0)
    x0 = int(cols[0]) if len(cols) else 0
    block = mask[rows[ra:rb], x0:int(cols[-1]) + 1] if rb > ra else np.zeros((0, 0), dtype=bool)
    change = np.empty((len(block) + (rb < len(rows)), block.shape[1]), dtype=bool)
    if len(block):
        change[0] = block[0]  # the read row above the box (or the implicit 0 above row 0) is all 0
        change[1:len(block)] = block[1:] != block[:-1]
        change[len(block):] = block[-1]  # 1 -> 0 on the read row below the box
    # per source column of the box, its transition rows in order: a flat search of the column-major
    # copy (np.nonzero of the transposed view walks it with strides: 3-5x slower on a blob's box)
    j, r = np.divmod(np.flatnonzero(np.ascontiguousarray(change.T)), max(1, len(change)))
    j, r = j + x0, r + ra
    per_col = np.bincount(j, minlength=w)
    offset = np.concatenate([[0], np.cumsum(per_col)[:-1]])
    # output column x repeats source column xs[x]: its transitions, at x * H0 + their first output rows
    n = per_col[xs]
    x = np.repeat(np.arange(w0), n)
    k = np.repeat(offset[xs] - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
    pos = x * h0 + first_out[r[k]]
    # at a column's start the previous column's last value is the real predecessor, not 0
    ends_on = np.concatenate([[False], mask[rows[-1], xs[:-1]]])
    starts_on = mask[rows[0], xs]
    starts = np.arange(w0) * h0
    fix = ends_on  # previous column ended on 1: toggle the transition at this column's start
    pos = _merge_sorted(pos, starts[fix & starts_on], drop_found=True)  # 1 -> 1: none
    pos = _merge_sorted(pos, starts[fix & ~starts_on], drop_found=False)  # 1 -> 0: one
    counts = np.diff(np.concatenate([[0], pos, [h0 * w0]]))
    if len(counts) > 1 and counts[-1] == 0:
        counts = counts[:-1]
    return mask_utils.frPyObjects({"size": [h0, w0], "counts": counts.tolist()}, h0, w0)


def _merge_sorted(pos: np.ndarray, values: np.ndarray, drop_found: bool) -> np.ndarray:
    """``values`` (sorted, unique) merged into ``pos`` (sorted, unique): inserted where absent and,
    with ``drop_found``, removed where present (``np.setxor1d``; else ``np.union1d``), by binary
    search instead of sorting both again."""
    if len(values) == 0:
        return pos
    idx = np.searchsorted(pos, values)
    found = idx < len(pos)
    found[found] = pos[idx[found]] == values[found]
    if drop_found:
        pos = np.delete(pos, idx[found])
    missing = values[~found]
    return np.insert(pos, np.searchsorted(pos, missing), missing)


def instance_rles(inst: InstancePrediction) -> Iterator[dict[str, Any]]:
    """COCO RLE (counts as bytes) of each instance mask at the image size, one mask at a time (an
    instance prediction held at a smaller size is encoded from its small mask:
    :func:`nearest_resized_rle`; one at the image size inside its bounding box: :func:`mask_stack_rles`)."""
    for i in range(len(inst.scores)):
        m = inst.masks[i]
        if tuple(m.shape) != tuple(inst.size):
            yield nearest_resized_rle(m.detach().cpu().numpy(), inst.size)
            continue
        yield mask_stack_rles(m.detach().cpu().numpy()[None])[0]
