"""PointViT options for classifiers trained from scratch: conv stem, sample_patch, locality bias."""

from __future__ import annotations

import pytest
import torch

from vitp.classifiers import PointViT
from vitp.classifiers.stems import conv_stem

KW = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64, "patch_size": 8}


def test_conv_stem_has_the_patch_stride_and_width():
    stem = conv_stem(8, 32)
    assert stem(torch.randn(2, 3, 64, 40)).shape == (2, 32, 8, 5)
    with pytest.raises(ValueError):
        conv_stem(14, 32)
    with pytest.raises(ValueError, match="width"):
        conv_stem(8, 32, width=0)


def test_conv_stem_width_sets_the_channels_of_every_stride_step():
    narrow = PointViT(5, model_name="vit_tiny_patch16_224", image_size=64, stem="conv", stem_width=4, model_kwargs=KW)
    convs = [m for m in narrow.backbone.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32]  # 3 stride-2 steps, then 1x1 to the width
    with pytest.raises(ValueError, match="stem='conv'"):
        PointViT(5, model_name="vit_tiny_patch16_224", stem_width=16, model_kwargs=KW)


def test_point_vit_with_conv_stem_keeps_every_other_weight_name():
    plain = PointViT(5, model_name="vit_tiny_patch16_224", image_size=64, model_kwargs=KW)
    conv = PointViT(5, model_name="vit_tiny_patch16_224", image_size=64, stem="conv", model_kwargs=KW)
    outside = {k for k in plain.state_dict() if not k.startswith("backbone.patch_embed.proj")}
    assert outside <= set(conv.state_dict())
    logits = conv(torch.randn(2, 3, 64, 64), torch.rand(2, 7, 2) * 2 - 1, torch.tensor([[64, 64], [40, 64]]))
    assert logits.shape == (2, 7, 5) and torch.isfinite(logits).all()
    with pytest.raises(ValueError):
        PointViT(5, model_name="vit_tiny_patch16_224", stem="hybrid", model_kwargs=KW)


def test_sample_patch_point_starts_as_the_patch_token_under_it():
    torch.manual_seed(0)
    m = PointViT(5, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                 stem="conv", model_kwargs=KW).eval()
    images = torch.randn(1, 3, 64, 64)
    seq, _, _, grids, vs, grids_for_points, _ = m._embed_patches(images, torch.tensor([[64, 64]]))
    # the centre of patch (row 2, col 5) of the 8x8 grid
    point = torch.tensor([[[2 * 2.5 / 8 - 1, 2 * 5.5 / 8 - 1]]])
    token = m._embed_points(point, vs, grids, grids_for_points)[0, 0]
    torch.testing.assert_close(token, seq[0, 2 * 8 + 5])
    assert m.point_offset is not None and m.point_offset.abs().sum() == 0


def test_locality_bias_buckets_prior_and_padding():
    from vitp.classifiers.locality import PointLocalityBias

    loc = PointLocalityBias(num_blocks=2, num_heads=3, radius=2)
    # a point at the centre of patch (1, 1) of a 4x4 grid (8-px patches, 32x32 image)
    point = torch.tensor([[[2 * 1.5 / 4 - 1, 2 * 1.5 / 4 - 1]]])
    index = loc.offset_index(point, torch.tensor([[32, 32]]), (8, 8), (4, 4))
    assert index.shape == (1, 1, 16)
    centre = 2 * 5 + 2
    assert index[0, 0, 1 * 4 + 1] == centre                      # its own patch: offset (0, 0)
    assert index[0, 0, 1 * 4 + 3] == centre + 2                  # two patches right
    key_mask = torch.ones(1, 1 + 16, dtype=torch.bool)
    key_mask[0, -4:] = False                                     # last patch row is padding
    bias = loc.attention_bias(0, index, key_mask, num_prefix=1)
    assert bias.shape == (1, 3, 1, 1 + 16 + 1)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, -1] == 0      # prefix token and own slot
    assert torch.isinf(bias[0, :, 0, -5:-1]).all()               # padding
    own, far = bias[0, 0, 0, 1 + 5], bias[0, 0, 0, 1 + 3]
    assert own == 0 and far < own                                 # narrow head prefers its patch
    assert (bias[0, -1, 0, 1:-5] == 0).all()                     # the last head has no prior


def test_locality_bias_keeps_points_independent_and_needs_one_way():
    torch.manual_seed(0)
    m = PointViT(5, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                 point_locality_radius=3, model_kwargs=KW).eval()
    images, points = torch.randn(2, 3, 64, 64), torch.rand(2, 9, 2) * 2 - 1
    valid = torch.tensor([[64, 64], [40, 64]])
    torch.testing.assert_close(m(images, points, valid)[:, :4], m(images, points[:, :4], valid))
    with pytest.raises(ValueError):
        PointViT(5, model_name="vit_tiny_patch16_224", attention="full", point_locality_radius=3, model_kwargs=KW)


def test_training_gradients_repeat_bit_for_bit_on_several_threads(keep_threads):
    """The locality bias is an embedding lookup: indexing ``table[:, index]`` accumulated its
    gradient with atomic adds on a multi-threaded CPU, so two identical steps differed in the last
    bits and a training run did not repeat (seen on 2 threads)."""
    torch.set_num_threads(max(2, torch.get_num_threads()))
    torch.manual_seed(0)
    model = PointViT(num_classes=11, model_name="vit_tiny_patch16_224", image_size=192, stem="conv",
                     point_encoding="sample_patch", point_locality_radius=4, pos_embed_init="sincos",
                     model_kwargs=dict(depth=1, embed_dim=32, num_heads=2, img_size=192))
    images = torch.randn(16, 3, 192, 192)
    points = torch.rand(16, 256, 2) * 2 - 1
    labels = torch.randint(0, 11, (16, 256))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        logits = model(images, points)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    first = gradients()
    assert "point_locality.table" in first
    for _ in range(4):
        again = gradients()
        for name, grad in first.items():
            assert torch.equal(grad, again[name]), f"{name}: gradient differs between identical steps"
