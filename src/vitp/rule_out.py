"""Cheap tests at mask resolution that rule out work before anything is read at full size.

Every upsampled logit lies between the bounds of one mask cell (:meth:`UpsampledLogits.bounds`), so
what a query can reach anywhere in a cell is known from the low-resolution logits alone. Two uses,
both exact (the results are those of reading everything):

* :func:`candidate_competition`: which panoptic candidates may win a pixel (``score * sigmoid``) in
  each cell row; the others are never read there.
* :func:`class_competition`: which semantic classes may win a pixel (``sum_q p[q, k] sigmoid_q``)
  in each cell row; the others' sums are never computed there, and a band of rows where one class
  competes alone needs no sums at all.

:func:`first_argmax` is the running maximum both tasks take over what is left.
"""

from __future__ import annotations

import numpy as np
import torch

from vitp.cpu_ops import numpy_ok
from vitp.upsampling import UpsampledLogits

__all__ = ["CLASS_SCORE_SLACK", "GEMM_ROWS", "SUBSET_MIN_CLASSES", "candidate_competition", "class_competition",
           "class_scores", "first_argmax"]

CLASS_SCORE_SLACK = 1e-3  # relative: a float sum of Q non-negative terms is within (Q - 1) * 2^-24 of
# its exact value (6e-6 for 100 queries), so bounds this far apart can not be crossed by rounding
GEMM_ROWS = 16  # a subset of classes is summed in a multiple of this many rows (zero columns added)
SUBSET_MIN_CLASSES = 32  # and only with at least this many classes (fewer: every class is summed)
# Why: the CPU's matrix product splits its rows between kernels and threads by their number, and each
# split rounds a row's float sum in its own way. Measured with torch's MKL on x86: fewer than 16 rows
# (1-3 with one thread, 5-11 with two, more with 16) round otherwise than among all classes; padded
# to a multiple of 16, a subset's sums were the same bits as among all 24-150 classes with 1-32
# threads, but not among 19 classes with 16 threads. Within these limits the rule-out is bit-exact
# (tests/test_postprocess_pruning.py checks it on the machine it runs on); beyond them a pixel whose
# two best classes tie to the last bit could take the other.


def candidate_competition(logits: UpsampledLogits, scores: torch.Tensor, queries: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per panoptic candidate and cell row: ``(may_win bool[q, h], may_cover bool[q, h])``.

    ``may_win``: the candidate may win a pixel of the argmax (``score * sigmoid``) in that row: its
    best possible value in some cell is not below the value some candidate is sure to reach there.
    ``may_cover``: its own mask (sigmoid >= 0.5) may reach that row. A candidate outside
    ``may_win`` there wins no pixel of it, and outside ``may_cover`` adds nothing to its own area,
    so full-size work per band of rows involves only the candidates that compete in it: the cost
    grows with local competition, not with every candidate the keep rule lets through.
    """
    lower, upper = logits.bounds(queries)
    s = scores[:, None, None]
    sure = (s * lower.sigmoid()).amax(0) * (1 - 1e-6)  # a few ulps below, for rounding
    return ((s * upper.sigmoid()) >= sure).any(2), (upper >= 0).any(2)


def class_competition(logits: UpsampledLogits, probs: torch.Tensor) -> torch.Tensor:
    """``bool[K, h]``: semantic class ``k`` may win a pixel of cell row ``r`` (``probs float[Q, K]``).

    ``sum_q p[q, k] sigmoid_q`` grows with every logit (``p >= 0``), so in each cell it lies between
    the sums at the cell's lower and upper logit bounds. A class whose upper sum is below the lower
    sum of some other class (by more than :data:`CLASS_SCORE_SLACK`) in every cell of a row wins no
    pixel there; ties are kept, so torch's first maximum is unchanged.
    """
    lower, upper = logits.bounds()
    sure = class_scores(probs, lower.sigmoid()).amax(0) * (1 - CLASS_SCORE_SLACK)
    return (class_scores(probs, upper.sigmoid()) * (1 + CLASS_SCORE_SLACK) >= sure).any(2)


def class_scores(probs: torch.Tensor, sigmoid: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """``float[k, h, w]``: ``sum_q probs[q, c] * sigmoid[q]`` for each class ``c`` of ``classes``
    (None: all of ``probs``' K columns), a subset computed in a multiple of :data:`GEMM_ROWS` rows
    so that its sums round as they do among all classes (for K >= :data:`SUBSET_MIN_CLASSES`)."""
    if classes is None:
        return torch.einsum("qk,qhw->khw", probs, sigmoid)
    k = len(classes)
    probs = probs[:, classes]
    if k % GEMM_ROWS:
        probs = torch.cat([probs, probs.new_zeros(probs.shape[0], GEMM_ROWS - k % GEMM_ROWS)], dim=1)
    return torch.einsum("qk,qhw->khw", probs, sigmoid)[:k]


def first_argmax(scores: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """``(scores[:, None, None] * values).argmax(0)`` (``values.argmax(0)`` when ``scores`` is None;
    the first maximum on ties, as torch's), as a running maximum over the candidates (or classes)
    of a band: several times cheaper than torch's reduction over the outer dimension, and free
    when one candidate competes alone."""
    if len(values) > 1 and numpy_ok(values) and (scores is None or (numpy_ok(scores) and scores.dtype == values.dtype)):
        return _first_argmax_numpy(None if scores is None else scores.detach().numpy(), values.detach().numpy())
    index = torch.zeros(values.shape[1:], dtype=torch.long, device=values.device)
    if len(values) > 1:
        best = values[0].clone() if scores is None else scores[0] * values[0]
        better = torch.empty(best.shape, dtype=torch.bool, device=best.device)
        for j in range(1, len(values)):
            value = values[j] if scores is None else scores[j] * values[j]
            torch.gt(value, best, out=better)
            index.masked_fill_(better, j)
            torch.maximum(value, best, out=best)
    return index


def _first_argmax_numpy(scores: np.ndarray | None, values: np.ndarray) -> torch.Tensor:
    """:func:`first_argmax`'s loop in numpy, whose comparisons run several times faster than torch's on
    a CPU (0.5-0.67x the time for 20 candidates at 256 x 256 and 1333 x 1000, one thread); the same
    float32 products and maxima, so the same result."""
    index = np.zeros(values.shape[1:], dtype=np.int64)
    best = values[0].copy() if scores is None else scores[0] * values[0]
    value, better = np.empty_like(best), np.empty(best.shape, dtype=np.bool_)
    for j in range(1, len(values)):
        if scores is None:
            value = values[j]
        else:
            np.multiply(scores[j], values[j], out=value)
        np.greater(value, best, out=better)
        np.putmask(index, better, j)
        np.maximum(value, best, out=best)
    return torch.from_numpy(index)
