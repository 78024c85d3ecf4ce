"""Fusion of proposer and point-classifier class distributions."""

from __future__ import annotations

import pytest
import torch

from vitp.fusion import fuse_class_probs


def logits(seed: int = 0, B: int = 2, Q: int = 5, K: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, Q, K + 1, generator=g) * 3, torch.randn(B, Q, K, generator=g) * 3


def test_rows_sum_to_one_and_void_kept() -> None:
    cls, pt = logits()
    p = fuse_class_probs(cls, pt, 0.4)
    assert p.shape == cls.shape
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(p[..., -1], cls.softmax(-1)[..., -1])


def test_alpha_limits() -> None:
    cls, pt = logits(1)
    void = cls.softmax(-1)[..., -1:]
    p0 = fuse_class_probs(cls, pt, 0.0)
    torch.testing.assert_close(p0[..., :-1], cls[..., :-1].softmax(-1) * (1 - void))
    p1 = fuse_class_probs(cls, pt, 1.0)
    torch.testing.assert_close(p1[..., :-1], pt.softmax(-1) * (1 - void))
    torch.testing.assert_close(p1[..., -1:], void)


def test_matches_reference_formula() -> None:
    cls, pt = logits(2)
    a = 0.4
    pp, ppt = cls[..., :-1].softmax(-1), pt.softmax(-1)
    ref = torch.log(pp ** (1 - a) * ppt**a).softmax(-1)
    void = cls.softmax(-1)[..., -1:]
    torch.testing.assert_close(fuse_class_probs(cls, pt, a), torch.cat([ref * (1 - void), void], -1))


def test_extreme_logits_are_finite() -> None:
    cls, pt = logits(3)
    p = fuse_class_probs(cls * 1e4, pt * 1e4, 0.4)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))


def test_class_agnostic_proposer() -> None:
    _, pt = logits(4)
    p = fuse_class_probs(None, pt, 0.4)
    torch.testing.assert_close(p[..., :-1], pt.softmax(-1))
    assert (p[..., -1] == 0).all()
    q = torch.rand(2, 5)
    p = fuse_class_probs(None, pt, mask_quality=q)
    torch.testing.assert_close(p[..., -1], 1 - q)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))


def test_validation() -> None:
    cls, pt = logits(5)
    with pytest.raises(ValueError):
        fuse_class_probs(cls, pt, alpha=1.5)
    with pytest.raises(ValueError):
        fuse_class_probs(cls[..., :-1], pt)
    with pytest.raises(ValueError):  # a no-object classifier needs K + 1 columns
        fuse_class_probs(cls, pt, point_no_object=True)


def test_no_object_classifier_fuses_objectness_geometrically() -> None:
    cls, pt = logits(6)
    pt1 = torch.cat([pt, torch.randn(2, 5, 1) * 3], -1)  # K classes + no object
    a = 0.4
    p = fuse_class_probs(cls, pt1, a, point_no_object=True)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    obj_prop, obj_pt = 1 - cls.softmax(-1)[..., -1], 1 - pt1.softmax(-1)[..., -1]
    num = obj_prop ** (1 - a) * obj_pt ** a
    expected_void = 1 - num / (num + (1 - obj_prop) ** (1 - a) * (1 - obj_pt) ** a)
    torch.testing.assert_close(p[..., -1], expected_void)
    # the class distribution ignores the no-object column: same as a K-column classifier
    q = p[..., :-1] / (1 - p[..., -1:])
    q_ref = fuse_class_probs(cls, pt, a)
    torch.testing.assert_close(q, q_ref[..., :-1] / (1 - q_ref[..., -1:]))
    # a classifier sure that a proposal is no object removes it; sure it is one rescues it
    sure_void = torch.cat([pt, torch.full((2, 5, 1), 30.0)], -1)
    sure_obj = torch.cat([pt, torch.full((2, 5, 1), -30.0)], -1)
    assert (fuse_class_probs(cls, sure_void, 0.5, point_no_object=True)[..., -1] > 0.99).all()
    assert (fuse_class_probs(cls, sure_obj, 0.5, point_no_object=True)[..., -1] < 0.01).all()
    # class-agnostic proposer with objectness: fused the same way
    q_mask = torch.rand(2, 5)
    p_ag = fuse_class_probs(None, pt1, 1.0, mask_quality=q_mask, point_no_object=True)
    torch.testing.assert_close(p_ag[..., -1], pt1.softmax(-1)[..., -1])
