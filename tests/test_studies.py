"""The studies of issue 24 (``vitp study ...``) and the inference point rules they compare.

Point rules: every rule's point lies in its proposal's mask, also where the centroid does not
(a "C" shape); argmax is ``select_points`` unchanged. Studies: each runs end to end on the tiny
generated dataset (in-process ``vitp`` commands), writes markdown + CSV + its commands, and a
second run skips the finished cells. The cost table is read and overridden.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from vitp.point_rules import POINT_RULES, select_points_by_rule
from vitp.points import point_to_pixel
from vitp.proposal_points import select_points


def c_shape_logits(h: int = 16, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits float[1, 2, h, w]`` of two proposals (a "C" whose centroid lies outside it, and a
    small blob) and their masks ``bool[2, h, w]`` (logit > 0)."""
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 2:14, 2:14] = True
    masks[0, 5:11, 5:14] = False  # the C's opening: its centroid (about (7.5, 6)) is outside
    masks[1, 3:6, 15:19] = True
    logits = torch.where(masks, 1.0, -2.0) + torch.linspace(0, 0.5, h * w).reshape(h, w)
    logits[0, 2, 2] = 9.0  # argmax in a corner of the C
    return logits[None], masks


@pytest.mark.parametrize("rule", POINT_RULES)
@pytest.mark.parametrize("top_k", [1, 3])
def test_point_rules_give_points_inside_the_mask(rule: str, top_k: int):
    if rule == "centroid" and top_k > 1:
        pytest.skip("centroid gives one point")
    logits, masks = c_shape_logits()
    h, w = masks.shape[-2:]
    points = select_points_by_rule(logits, [[4 * h, 4 * w]], (4 * h, 4 * w), rule, top_k)
    assert points.shape == (1, 2, top_k, 2)
    for q in range(2):
        rows, cols = point_to_pixel(points[0, q], (h, w))
        assert masks[q, rows, cols].all(), (rule, q, rows.tolist(), cols.tolist())


def test_point_rules_differ_and_argmax_is_unchanged():
    logits, masks = c_shape_logits()
    h, w = masks.shape[-2:]
    args = ([[4 * h, 4 * w]], (4 * h, 4 * w))
    assert torch.equal(select_points_by_rule(logits, *args, "argmax", 2), select_points(logits, *args, 2))
    cells = {}
    for rule in POINT_RULES:
        rows, cols = point_to_pixel(select_points_by_rule(logits, *args, rule, 1)[0, 0, 0], (h, w))
        cells[rule] = (int(rows), int(cols))
    assert cells["argmax"] == (2, 2)
    assert cells["centroid"] != (7, 6) and masks[0][cells["centroid"]]  # snapped into the C
    # interior: the C's arms are 3 cells thick, so its deepest cells are 2 cells from the outside
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(torch.nn.functional.pad(masks[0], (1, 1, 1, 1)).numpy())[1:-1, 1:-1]
    assert depth[cells["interior"]] == depth.max()


def test_point_rule_random_is_seeded_and_rejects_bad_settings():
    logits, _ = c_shape_logits()
    args = ([[64, 80]], (64, 80))
    a = select_points_by_rule(logits, *args, "random", 4, seed=1)
    assert torch.equal(a, select_points_by_rule(logits, *args, "random", 4, seed=1))
    assert not torch.equal(a, select_points_by_rule(logits, *args, "random", 4, seed=2))
    with pytest.raises(ValueError, match="centroid"):
        select_points_by_rule(logits, *args, "centroid", 2)
    with pytest.raises(ValueError, match="unknown"):
        select_points_by_rule(logits, *args, "median", 1)  # type: ignore[arg-type]
