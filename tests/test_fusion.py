"""Fusion of proposer and point-classifier class distributions."""

from __future__ import annotations

import pytest
import torch

from vitp.fusion import Fusion, fuse_class_probs


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


def test_fusion_module_per_task_and_validation() -> None:
    cls, pt = logits(5)
    f = Fusion(alpha=0.4, alpha_per_task={"semantic": 1.0})
    torch.testing.assert_close(f(cls, pt, task="semantic"), fuse_class_probs(cls, pt, 1.0))
    torch.testing.assert_close(f(cls, pt, task="panoptic"), fuse_class_probs(cls, pt, 0.4))
    with pytest.raises(ValueError):
        Fusion(alpha=1.5)
    with pytest.raises(ValueError):
        fuse_class_probs(cls[..., :-1], pt)
