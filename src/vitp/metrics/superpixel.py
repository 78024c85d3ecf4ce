"""How well an unsupervised partition (superpixels, grouping-layer segments) follows ground truth.

All functions take integer label maps ``[H, W]`` (numpy or anything ``np.asarray`` accepts):

* ``pred``: any integer ids, one per predicted segment (need not be contiguous);
* ``gt``: ground-truth segment ids, ``void`` (default -1) = unlabelled, excluded.

Metrics (the usual superpixel benchmark definitions):

* :func:`achievable_segmentation_accuracy` (ASA): every predicted segment takes the GT segment it
  overlaps most (among non-void pixels); the fraction of non-void pixels then labelled correctly.
  An upper bound on the accuracy of any labelling that is constant on predicted segments.
* :func:`boundary_recall`: the fraction of GT boundary pixels (non-void pixels with a 4-neighbour
  of another GT id, void counting as an id) within ``tolerance`` px (Chebyshev distance, i.e. a
  ``(2t+1)^2`` square) of a predicted boundary pixel.
* :func:`boundary_fraction`: the fraction of pixels that are predicted boundary pixels, to read
  boundary recall against (a partition with more boundary gets more recall for free).

:func:`grid_partition` is the baseline: a uniform ``gh x gw`` grid of (nearly) equal cells.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

VOID = -1


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be 2-D maps of one shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def achievable_segmentation_accuracy(pred, gt, void: int = VOID) -> float:
    """ASA in [0, 1]; NaN when every GT pixel is void."""
    pred, gt = _pair(pred, gt)
    keep = gt != void
    if not keep.any():
        return float("nan")
    _, p = np.unique(pred[keep], return_inverse=True)
    _, g = np.unique(gt[keep], return_inverse=True)
    counts = np.zeros((p.max() + 1, g.max() + 1), np.int64)
    np.add.at(counts, (p.ravel(), g.ravel()), 1)
    return float(counts.max(1).sum() / keep.sum())


def boundary_map(labels) -> np.ndarray:
    """``bool[H, W]``: pixels with a 4-neighbour of a different id (both sides of an edge marked)."""
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    dy = lab[1:] != lab[:-1]
    dx = lab[:, 1:] != lab[:, :-1]
    b[1:] |= dy
    b[:-1] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


def boundary_recall(pred, gt, tolerance: int = 2, void: int = VOID) -> float:
    """Boundary recall in [0, 1]; NaN when the GT has no (non-void) boundary pixel."""
    pred, gt = _pair(pred, gt)
    gt_b = boundary_map(gt) & (gt != void)
    if not gt_b.any():
        return float("nan")
    pred_b = boundary_map(pred)
    if tolerance > 0:
        pred_b = maximum_filter(pred_b, size=2 * tolerance + 1, mode="constant", cval=False)
    return float((pred_b & gt_b).sum() / gt_b.sum())


def boundary_fraction(pred) -> float:
    """Fraction of pixels on a predicted boundary (context for boundary recall)."""
    return float(boundary_map(pred).mean())


def grid_partition(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """``int64[height, width]``: a uniform ``rows x cols`` grid, ids ``r * cols + c`` row-major
    (pixel row ``y`` is in grid row ``floor(y * rows / height)``, likewise for columns)."""
    if rows < 1 or cols < 1 or rows > height or cols > width:
        raise ValueError(f"a {rows}x{cols} grid does not fit a {height}x{width} map")
    r = (np.arange(height) * rows) // height
    c = (np.arange(width) * cols) // width
    return r[:, None] * cols + c[None, :]


def num_segments(pred) -> int:
    """Number of distinct ids in ``pred``."""
    return int(np.unique(np.asarray(pred)).size)
