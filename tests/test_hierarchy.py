"""Hard segment maps of the native backbone's grouping hierarchy (``vitp.backbones.hierarchy``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitp.backbones import NativeBackbone
from vitp.backbones.hierarchy import hierarchy_maps, level_num_groups, segment_hierarchy


@pytest.mark.parametrize("size", [(64, 96), (37, 45)])
def test_shapes_and_label_ranges(size):
    h, w = size
    torch.manual_seed(0)
    backbone = NativeBackbone.from_preset("tiny").eval()
    maps = segment_hierarchy(backbone, torch.randn(2, 3, h, w))
    assert sorted(maps) == [1, 2, 3]
    hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    out = backbone(torch.randn(1, 3, h, w))
    for level, m in maps.items():
        assert m.shape == (2, h, w) and m.dtype == torch.long
        n = (hp // 2 ** (level + 2)) * (wp // 2 ** (level + 2))
        assert level_num_groups(out, level) == n
        assert m.min() >= 0 and m.max() < n
        assert m.unique().numel() <= n


def test_maps_are_argmax_of_the_direct_chain_product():
    torch.manual_seed(1)
    backbone = NativeBackbone.from_preset("tiny").eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(images)
        maps = hierarchy_maps(out)
        product = out.assignments[0].dense()
        for level in (1, 2, 3):
            if level > 1:
                product = product @ out.assignments[level - 1].dense()
            direct = product.argmax(-1).reshape(2, 16, 24)  # stride-4 grid
            expected = direct.repeat_interleave(4, 1).repeat_interleave(4, 2)
            assert torch.equal(maps[level], expected), level


def test_without_grouping_levels_are_nested_grid_cells():
    torch.manual_seed(0)
    backbone = NativeBackbone.from_preset("tiny", grouping=False).eval()
    maps = segment_hierarchy(backbone, torch.randn(1, 3, 64, 64), levels=(1, 3))
    y = torch.arange(64)
    for level, m in maps.items():
        cell = 2 ** (level + 2)
        cols = 64 // cell
        expected = (y[:, None] // cell) * cols + y[None, :] // cell
        assert torch.equal(m[0], expected)
    # one-hot chain: every level-1 segment lies inside one level-3 segment
    fine, coarse = maps[1][0].flatten(), maps[3][0].flatten()
    onehot = F.one_hot(fine).T.float() @ F.one_hot(coarse).float()
    assert ((onehot > 0).sum(1) <= 1).all()
