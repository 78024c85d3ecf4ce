"""ViewMemo: a frozen trunk's outputs remembered per view, in the proposer and the point classifier."""

from __future__ import annotations

import pytest
import torch

from vitp.classifiers import PointViT
from vitp.view_memo import ViewMemo

TINY_VIT = dict(embed_dim=32, depth=3, num_heads=2, img_size=56, init_values=0.5)


def test_memo_runs_only_unseen_views_and_keeps_batch_order() -> None:
    calls = []

    def compute(x: torch.Tensor) -> list[torch.Tensor]:
        calls.append(len(x))
        return [x.mean(dim=(1, 2, 3)), x[:, :1] * 2]

    memo = ViewMemo(capacity=3)
    a, b, c, d = (torch.full((1, 4, 4), float(v)) for v in range(4))
    first = memo(torch.stack([a, b]), compute)
    second = memo(torch.stack([b, c, a]), compute)  # only c is new
    assert calls == [2, 1] and (memo.hits, memo.misses) == (2, 3) and len(memo) == 3
    assert torch.equal(second[0], torch.tensor([1.0, 2.0, 0.0]))
    assert torch.equal(second[1], torch.stack([b, c, a])[:, :1] * 2)
    assert torch.equal(first[0], torch.tensor([0.0, 1.0]))
    memo(torch.stack([d]), compute)  # full: computed, not stored
    assert len(memo) == 3 and calls[-1] == 1
    memo(torch.stack([d]), compute)
    assert calls[-1] == 1 and len(calls) == 4
    # a flipped view is another view
    memo(torch.stack([a.flip(-1) + torch.arange(4.0)]), compute)
    assert len(calls) == 5
    with pytest.raises(ValueError, match="capacity"):
        ViewMemo(-1)


def test_point_vit_trunk_cache_gives_its_own_logits() -> None:
    torch.manual_seed(0)
    kwargs = dict(image_size=56, model_kwargs=TINY_VIT, point_encoding="sample_patch", point_start_block=1,
                  frame="square", freeze_backbone=True)
    plain = PointViT(5, "vit_small_patch14_dinov2", **kwargs).train()
    cached = PointViT(5, "vit_small_patch14_dinov2", trunk_cache_size=10, **kwargs).train()
    cached.load_state_dict(plain.state_dict())
    images, points = torch.randn(2, 3, 50, 40), torch.rand(2, 6, 2) * 40
    want = plain(images, points)
    for _ in range(2):  # the second call reads both views from the memo
        got = cached(images, points)
        assert torch.allclose(got, want, atol=1e-5)
    assert (cached._trunk_memo.misses, cached._trunk_memo.hits) == (2, 2)
    got.sum().backward()  # the head still trains
    assert cached.head.weight.grad is not None
    with pytest.raises(ValueError, match="trunk_cache_size needs"):
        PointViT(5, "vit_small_patch14_dinov2", image_size=56, model_kwargs=TINY_VIT, trunk_cache_size=4)
