"""Superpixel metrics (``vitp.metrics.superpixel``) on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from vitp.metrics.superpixel import (
    achievable_segmentation_accuracy as asa,
    boundary_fraction,
    boundary_map,
    boundary_recall,
    grid_partition,
    num_segments,
)


def two_by_two_gt() -> np.ndarray:
    """8x8: four GT segments, quadrants (ids 0..3), one void column on the right edge."""
    gt = np.zeros((8, 8), np.int64)
    gt[:4, 4:] = 1
    gt[4:, :4] = 2
    gt[4:, 4:] = 3
    gt[:, 7] = -1
    return gt


def test_perfect_partition_scores_one():
    gt = two_by_two_gt()
    pred = np.where(gt >= 0, gt + 10, 99)  # other ids, void region its own segment
    assert asa(pred, gt) == 1.0
    assert boundary_recall(pred, gt, tolerance=0) == 1.0
    # merging the void column into segments 1/3: ASA ignores void pixels, but the edge of a
    # segment against void is a GT boundary: 32 GT boundary px (cols 3-4: 16, rows 3-4: +10,
    # col 6: +6), the 6 on column 6 outside rows 3-4 are missed
    pred2 = grid_partition(8, 8, 2, 2)
    assert asa(pred2, gt) == 1.0
    assert boundary_recall(pred2, gt, tolerance=0) == pytest.approx(26 / 32)


def test_single_segment():
    gt = two_by_two_gt()
    pred = np.zeros_like(gt)
    # largest GT segment among non-void pixels: quadrant 0 or 2 (16 px each) out of 56
    assert asa(pred, gt) == pytest.approx(16 / 56)
    assert boundary_recall(pred, gt) == 0.0
    assert boundary_fraction(pred) == 0.0


def test_asa_hand_computed_and_order_free():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 2, -1]])
    pred = np.array([[5, 5, 5, 7],
                     [5, 5, 7, 7],
                     [7, 7, 7, 7]])
    # segment 5 (5 px): 4 of GT 0, 1 of GT 1 -> 4; segment 7 (6 non-void px): 1+... GT1: 3, GT2: 3 -> 3
    assert asa(pred, gt) == pytest.approx(7 / 11)
    assert asa(pred.T, gt.T) == pytest.approx(7 / 11)
    assert asa(pred * 3 + 1, gt) == pytest.approx(7 / 11)  # ids are arbitrary


def test_over_segmentation_gives_asa_one_but_boundary_fraction_shows_it():
    gt = two_by_two_gt()
    pixels = np.arange(64).reshape(8, 8)  # every pixel its own segment
    assert asa(pixels, gt) == 1.0 and boundary_recall(pixels, gt, tolerance=0) == 1.0
    assert boundary_fraction(pixels) == 1.0
    assert boundary_fraction(grid_partition(8, 8, 2, 2)) == pytest.approx(28 / 64)


def test_boundary_tolerance():
    gt = np.zeros((10, 10), np.int64)
    gt[:, 5:] = 1  # GT boundary pixels: columns 4 and 5
    for shift in range(5):
        pred = np.zeros_like(gt)
        pred[:, 5 + shift:] = 1  # predicted boundary pixels: columns 4+shift, 5+shift
        for tol in range(5):
            # the dilated prediction covers columns 4+shift-tol .. 5+shift+tol
            expected = 1.0 if tol >= shift else 0.5 if tol == shift - 1 else 0.0
            assert boundary_recall(pred, gt, tolerance=tol) == expected, (shift, tol)
    far = np.zeros_like(gt)
    far[:, 9:] = 1
    assert boundary_recall(far, gt, tolerance=2) == 0.0  # column 8 is 3 px from column 5


def test_boundary_map_and_void_excluded():
    lab = np.array([[0, 0, 1],
                    [0, 0, 1],
                    [2, 2, 2]])
    assert boundary_map(lab).tolist() == [[False, True, True], [True, True, True], [True, True, True]]
    gt = np.full((4, 4), -1)
    assert np.isnan(asa(np.zeros((4, 4)), gt)) and np.isnan(boundary_recall(np.zeros((4, 4)), gt))
    with pytest.raises(ValueError):
        asa(np.zeros((3, 4)), np.zeros((4, 3)))


def test_grid_partition():
    g = grid_partition(10, 7, 3, 2)
    assert g.shape == (10, 7) and num_segments(g) == 6
    assert g.min() == 0 and g.max() == 5
    sizes = np.bincount(g.ravel())
    assert sizes.max() - sizes.min() <= 7  # rows split 4/3/3 (x cols 4/3): nearly equal cells
    assert (g[:, :4] % 2 == 0).all() and (g[:, 4:] % 2 == 1).all()
    assert np.array_equal(grid_partition(128, 128, 4, 4)[::32, ::32], np.arange(16).reshape(4, 4))
    with pytest.raises(ValueError):
        grid_partition(4, 4, 5, 1)
