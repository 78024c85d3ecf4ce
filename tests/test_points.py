"""Training point samplers and inference point selection."""

from __future__ import annotations

import pytest
import torch

from vitp.points import (
    BoxSampler,
    ClassBalancedSampler,
    CoarseMaskSampler,
    InstanceSampler,
    MixedSampler,
    mask_boxes,
    pixel_to_point,
)
from vitp.proposal_geometry import select_points
from vitp.structures import Target


def point_to_pixel(points: torch.Tensor, valid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = valid_size
    r = ((points[:, 0] + 1) * h / 2 - 0.5).round().long()
    c = ((points[:, 1] + 1) * w / 2 - 0.5).round().long()
    return r, c


def make_target() -> Target:
    """40x60 frame, valid region 30x50. Class 0: big stuff area; class 1: two small things; class 2:
    a crowd region; some void. Padding pixels are covered by a mask too (must never be sampled)."""
    H, W = 40, 60
    masks = torch.zeros(5, H, W, dtype=torch.bool)
    masks[0, :20, :] = True  # class 0 stuff, also extends into padding columns 50..59
    masks[1, 22:26, 5:15] = True  # class 1 thing: rows 22-25, cols 5-14
    masks[2, 24:30, 30:33] = True  # class 1 thing: rows 24-29, cols 30-32
    masks[3, 10:20, 40:50] = True  # crowd (class 2), overlapping class 0
    masks[4, 32:40, :] = True  # segment entirely in the padding rows
    masks[0, 10:20, 40:50] = False
    return Target(
        masks=masks,
        labels=torch.tensor([0, 1, 1, 2, 1]),
        is_crowd=torch.tensor([False, False, False, True, False]),
        segments=torch.zeros(30, 50, dtype=torch.long),
        image_id=1,
        file_name="x.png",
        orig_size=(30, 50),
        valid_size=(30, 50),
    )


def label_at(target: Target, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: the non-crowd label under it (-1 void) and whether it is crowd."""
    r, c = point_to_pixel(points, target.valid_size)
    assert (r >= 0).all() and (r < 30).all() and (c >= 0).all() and (c < 50).all()
    m = target.masks[:, r, c]  # [N, P]
    crowd = m[target.is_crowd].any(0)
    lab = torch.full((len(r),), -1)
    for i in range(len(target.labels)):
        if not target.is_crowd[i]:
            lab[m[i]] = target.labels[i]
    return lab, crowd


@pytest.mark.parametrize("sampler", [ClassBalancedSampler(500), InstanceSampler(500),
                                     CoarseMaskSampler(500, margin=1)])
def test_samplers_never_void_crowd_or_padding(sampler) -> None:
    t = make_target()
    pts, labels = sampler(t, torch.Generator().manual_seed(0))
    assert pts.shape == (500, 2) and labels.shape == (500,) and labels.dtype == torch.long
    assert pts.abs().max() < 1
    under, crowd = label_at(t, pts)
    assert not crowd.any()
    assert (under == labels).all()


def test_pixel_centres_round_trip() -> None:
    rows, cols = torch.tensor([0, 29, 7]), torch.tensor([0, 49, 13])
    r, c = point_to_pixel(pixel_to_point(rows, cols, (30, 50)), (30, 50))
    assert r.tolist() == rows.tolist() and c.tolist() == cols.tolist()


def test_class_balance_and_determinism() -> None:
    t = make_target()
    pts, labels = ClassBalancedSampler(3000)(t, torch.Generator().manual_seed(1))
    frac = torch.bincount(labels, minlength=3).float() / 3000
    assert frac[2] == 0  # crowd class never
    assert abs(frac[0] - 0.5) < 0.05 and abs(frac[1] - 0.5) < 0.05  # despite 1000 vs ~58 pixels
    pts2, labels2 = ClassBalancedSampler(3000)(t, torch.Generator().manual_seed(1))
    assert torch.equal(pts, pts2) and torch.equal(labels, labels2)
    _, inst = InstanceSampler(3000)(t, torch.Generator().manual_seed(1))
    assert abs((inst == 1).float().mean() - 2 / 3) < 0.05  # two of three segments are class 1


def test_empty_image_gives_zero_points() -> None:
    t = make_target()
    t.is_crowd = torch.tensor([True, True, True, True, False])  # only the padding segment is left
    for s in [ClassBalancedSampler(10), InstanceSampler(10), CoarseMaskSampler(10), BoxSampler(10)]:
        pts, labels = s(t, torch.Generator().manual_seed(0))
        assert pts.shape == (0, 2) and labels.shape == (0,)


def test_coarse_erosion_and_label_map() -> None:
    t = make_target()
    pts, labels = CoarseMaskSampler(400, margin=3)(t, torch.Generator().manual_seed(2))
    r, c = point_to_pixel(pts, t.valid_size)
    # thing 1 is 4 rows high -> erased by margin 3; thing 2 is 3 cols wide -> erased as well
    assert (labels == 0).all()
    assert (r <= 16).all()  # class 0 eroded at its bottom edge (row 19 - 3)
    # provided coarse map
    lab = torch.full((30, 50), 255)
    lab[0:5, 0:5] = 4
    lab[12:14, 42:44] = 3  # under the crowd region: must be dropped
    pts, labels = CoarseMaskSampler(50)(t, torch.Generator().manual_seed(0), coarse_labels=lab)
    r, c = point_to_pixel(pts, t.valid_size)
    assert (labels == 4).all() and (r < 5).all() and (c < 5).all()


def test_mask_boxes_xy() -> None:
    m = torch.zeros(1, 20, 30, dtype=torch.bool)
    m[0, 2:6, 10:25] = True  # rows (y) 2..5, cols (x) 10..24
    assert mask_boxes(m).tolist() == [[2, 10, 5, 24]]


def test_box_sampler_central_region() -> None:
    t = make_target()
    s = BoxSampler(600, center_fraction=0.5, thing_classes=[1], allow_void=True)
    pts, labels = s(t, torch.Generator().manual_seed(3))
    assert (labels == 1).all()
    r, c = point_to_pixel(pts, t.valid_size)
    in1 = (r >= 23) & (r <= 24) & (c >= 7) & (c <= 12)  # central half of rows 22-25 / cols 5-14
    in2 = (r >= 25) & (r <= 28) & (c == 31)  # central half of rows 24-29 / cols 30-32
    assert (in1 | in2).all() and in1.any() and in2.any()
    # a wide, flat box: central half must be wide in x, flat in y
    t2 = make_target()
    t2.masks[1] = False
    t2.masks[1, 22:24, 0:40] = True
    s2 = BoxSampler(300, thing_classes=[1], allow_void=True)
    pts, _ = s2(t2, torch.Generator().manual_seed(0))
    r, c = point_to_pixel(pts, t2.valid_size)
    sel = r < 24
    assert c[sel].min() >= 10 and c[sel].max() <= 29 and c[sel].max() - c[sel].min() > 10


def test_box_sampler_avoids_void_and_crowd_by_default() -> None:
    t = make_target()
    pts, labels = BoxSampler(500, center_fraction=1.0)(t, torch.Generator().manual_seed(4))
    under, crowd = label_at(t, pts)
    assert not crowd.any() and (under >= 0).all()


def test_mixed_sampler() -> None:
    t = make_target()
    s = MixedSampler([ClassBalancedSampler(5), InstanceSampler(7)], weights=[0.0, 1.0])
    pts, _ = s(t, torch.Generator().manual_seed(0))
    assert pts.shape == (7, 2)


def test_select_points_argmax_in_valid_region() -> None:
    # frame 40x60 with valid region 30x45; mask logits at quarter resolution 10x15
    logits = torch.zeros(2, 3, 10, 15)
    logits[0, 0, 2, 3] = 5.0
    logits[0, 1, 9, 14] = 100.0  # in the padding: must be ignored
    logits[0, 1, 6, 10] = 1.0
    logits[1, 2, 0, 0] = 2.0
    vs = torch.tensor([[30, 45], [40, 60]])
    pts = select_points(logits, vs, (40, 60))
    assert pts.shape == (2, 3, 1, 2)
    # cell (2, 3) covers frame rows 8-11 / cols 12-15 -> centre (10, 14) in a 30x45 region
    torch.testing.assert_close(pts[0, 0, 0], torch.tensor([2 * 10 / 30 - 1, 2 * 14 / 45 - 1]))
    torch.testing.assert_close(pts[0, 1, 0], torch.tensor([2 * 26 / 30 - 1, 2 * 42 / 45 - 1]))
    torch.testing.assert_close(pts[1, 2, 0], torch.tensor([2 * 2 / 40 - 1, 2 * 2 / 60 - 1]))
    top = select_points(logits, vs, (40, 60), top_k=2)
    assert top.shape == (2, 3, 2, 2)
    torch.testing.assert_close(top[:, :, 0], pts[:, :, 0])
    # mask coordinates given directly
    same = select_points(logits, None, (40, 60), mask_valid_sizes=torch.tensor([[7.5, 11.25], [10, 15]]))
    torch.testing.assert_close(same, pts)
    assert (pts.abs() <= 1).all()


def _select_points_reference(logits: torch.Tensor, vs: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
    """The earlier select_points (masked fill + topk), kept here to check the numpy argmax against."""
    from vitp.proposal_geometry import valid_cells

    w = logits.shape[-1]
    region, ok = valid_cells(logits, vs, frame)
    idx = logits.masked_fill(~ok[:, None], float("-inf")).flatten(2).topk(1, dim=-1).indices
    r, c = (idx // w).double(), (idx % w).double()
    y = (2 * (r + 0.5) / region[:, 0, None, None] - 1).clamp(-1, 1)
    x = (2 * (c + 0.5) / region[:, 1, None, None] - 1).clamp(-1, 1)
    return torch.stack([y, x], dim=-1).to(logits.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_select_points_numpy_argmax_equals_topk(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for case in range(40):
        b, q, h, w = 3, int(torch.randint(0, 9, (1,), generator=g)), 16, 20
        logits = torch.randn(b, q, h, w, generator=g).to(dtype)
        if case % 4 == 1:  # coarse values: ties, which go to topk
            logits = logits.round()
        if case % 4 == 2 and q:  # padding cells larger than anything valid
            logits[:, :, 12:, :] = 50
        if case % 4 == 3 and q:
            logits[0, 0, 3, 4] = float("nan")
        vs = torch.tensor([[64, 80], [50, 61], [7, 80]])
        got = select_points(logits, vs, (64, 80))
        torch.testing.assert_close(got, _select_points_reference(logits, vs, (64, 80)), rtol=0, atol=0, equal_nan=True)
