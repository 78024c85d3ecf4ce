"""Inference point rules: which point of a proposal the point classifier looks at.

The reference (and vitp's default, ``argmax``) takes the cell with the highest mask logit; the
paper leaves open whether another point would do better (issue 24). The rules here choose among the
proposal's mask cells (logit > 0, inside the image's valid region):

* ``argmax``: the ``top_k`` highest logits (exactly :func:`vitp.proposal_geometry.select_points`);
* ``interior``: the cell(s) farthest from the mask's boundary (Euclidean distance transform; the
  edge of the valid region counts as boundary), ties broken by the higher logit;
* ``centroid``: the mask cell nearest to the mask's centroid (the centroid itself when it lies in
  the mask; a ring's or a "C"'s centroid does not), ties broken by the higher logit;
* ``random``: ``top_k`` mask cells drawn uniformly (numpy generator seeded with ``seed`` on each
  call, so a run is reproducible).

``top_k`` points per proposal are classified and their logits averaged by the pipeline; for
``interior`` the ``top_k`` most interior cells, for ``random`` ``top_k`` draws, and ``centroid``
allows only ``top_k = 1``. A proposal with no cell above logit 0 (an empty mask) falls back to
``argmax``. Points use :func:`select_points`' convention: (y, x) cell centres in [-1, 1] of the
valid region, ``float[B, Q, top_k, 2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage

from vitp.proposal_geometry import select_points, valid_cells

PointRule = Literal["argmax", "interior", "centroid", "random"]
POINT_RULES: tuple[str, ...] = get_args(PointRule)


def check_point_rule(rule: str, top_k: int) -> None:
    """Raise ``ValueError`` for an unknown rule or a ``top_k`` the rule does not support."""
    if rule not in POINT_RULES:
        raise ValueError(f"unknown inference point rule {rule!r}; expected one of {POINT_RULES}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if rule == "centroid" and top_k != 1:
        raise ValueError("the centroid rule gives one point per proposal (top_k=1)")


def _cells_interior(mask: np.ndarray, logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    flat = np.flatnonzero(mask)
    order = np.lexsort((-logits.ravel()[flat], -depth.ravel()[flat]))  # depth first, then logit
    return flat[order[:k]]


def _cells_centroid(mask: np.ndarray, logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    dist = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    flat = rows * mask.shape[1] + cols
    order = np.lexsort((-logits.ravel()[flat], dist))
    return flat[order[:1]]


def _cells_random(mask: np.ndarray, logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    flat = np.flatnonzero(mask)
    return rng.choice(flat, size=k, replace=len(flat) < k)


_RULES = {"interior": _cells_interior, "centroid": _cells_centroid, "random": _cells_random}


def select_points_by_rule(
    mask_logits: torch.Tensor,
    valid_sizes: torch.Tensor | Sequence[Sequence[int]],
    frame_size: tuple[int, int],
    rule: PointRule = "argmax",
    top_k: int = 1,
    mask_valid_sizes: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The inference point(s) of each proposal under ``rule``: ``float[B, Q, top_k, 2]`` (y, x).

    Arguments as :func:`vitp.proposal_geometry.select_points`, plus ``rule`` (see the module
    docstring) and ``seed`` (``random`` only). ``argmax`` returns ``select_points``' result unchanged.
    """
    check_point_rule(rule, top_k)
    fallback = select_points(mask_logits, valid_sizes, frame_size, top_k, mask_valid_sizes)
    if rule == "argmax":
        return fallback
    b, q, h, w = mask_logits.shape
    region, ok = valid_cells(mask_logits, valid_sizes, frame_size, mask_valid_sizes)
    logits = mask_logits.detach().float().cpu().numpy()
    inside = ((mask_logits.detach() > 0) & ok[:, None]).cpu().numpy()
    region_np = region.cpu().numpy()
    rng = np.random.default_rng(seed)
    out = fallback.clone()
    pick = _RULES[rule]
    for i in range(b):
        for j in range(q):
            if not inside[i, j].any():
                continue  # empty mask: argmax
            cells = pick(inside[i, j], logits[i, j], top_k, rng)
            cells = np.resize(cells, top_k)  # fewer mask cells than top_k: repeat (interior)
            r, c = cells // w + 0.5, cells % w + 0.5
            y = np.clip(2 * r / region_np[i, 0] - 1, -1, 1)
            x = np.clip(2 * c / region_np[i, 1] - 1, -1, 1)
            out[i, j] = torch.from_numpy(np.stack([y, x], -1)).to(out)
    return out
