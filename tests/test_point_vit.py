"""PointViT on tiny random DINOv2-shaped ViTs (no hub access)."""

from __future__ import annotations

import pytest
import torch

from vitp.classifiers import PointViT
from vitp.classifiers.vit_ops import block_forward

TINY = dict(embed_dim=64, depth=2, num_heads=2, img_size=56, init_values=1.0)
NAME = "vit_small_patch14_dinov2"


def make(**kw) -> PointViT:
    torch.manual_seed(0)
    kw.setdefault("model_kwargs", TINY)
    kw.setdefault("image_size", 56)
    return PointViT(5, NAME, **kw).eval()


def rand_points(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, 2, generator=g) * 2 - 1


@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_forward_matches_timm(qk_norm: bool) -> None:
    m = make(model_kwargs={**TINY, "qk_norm": qk_norm})
    x = torch.randn(2, 9, 64)
    for blk in m.backbone.blocks:
        torch.testing.assert_close(block_forward(blk, x, None)[0], blk(x))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 5:] = False
    blk = m.backbone.blocks[0]
    torch.testing.assert_close(block_forward(blk, x, mask)[0], blk(x, attn_mask=mask))


@pytest.mark.parametrize("encoding", ["linear", "sample_pos_embed"])
def test_one_way_point_independent_of_others_and_batch(encoding: str) -> None:
    m = make(point_encoding=encoding)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 3, 56, 42, generator=g)
    other = torch.randn(1, 3, 56, 42, generator=g)
    p = rand_points(g, 1, 1)
    with torch.no_grad():
        alone = m(img, p, torch.tensor([[56, 42]]))
        crowd = torch.cat([rand_points(g, 1, 120), p, torch.zeros(1, 80, 2)], dim=1)  # incl. padding points
        among = m(img, crowd, torch.tensor([[56, 42]]))[:, 120:121]
        # batch with a differently sized image (bigger padded grid)
        big = torch.zeros(2, 3, 70, 70)
        big[0, :, :56, :42] = img[0]
        big[1, :, :70, :70] = torch.randn(3, 70, 70, generator=g)
        pts = torch.cat([crowd, rand_points(g, 1, 201)], dim=0)
        batched = m(big, pts, torch.tensor([[56, 42], [70, 70]]))[:1, 120:121]
    torch.testing.assert_close(among, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_chunking_and_cache_reuse() -> None:
    m = make()
    g = torch.Generator().manual_seed(2)
    img, pts = torch.randn(2, 3, 56, 56, generator=g), rand_points(g, 2, 10)
    with torch.no_grad():
        ref = m(img, pts)
        m.point_chunk_size = 3
        chunked = m(img, pts)
        cache = m.encode_patches(img)
        split = torch.cat([m.classify_points(cache, pts[:, :4]), m.classify_points(cache, pts[:, 4:])], 1)
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split, ref, atol=1e-5, rtol=1e-5)
    assert m.classify_points(cache, torch.zeros(2, 0, 2)).shape == (2, 0, 5)


def test_full_attention_points_interact() -> None:
    m = make(attention="full")
    g = torch.Generator().manual_seed(3)
    img, pts = torch.randn(1, 3, 56, 56, generator=g), rand_points(g, 1, 4)
    with torch.no_grad():
        a = m(img, pts)
        pts2 = pts.clone()
        pts2[:, 1:] = rand_points(g, 1, 3)
        b = m(img, pts2)
        # masking the other points restores independence
        masked = m(img, pts2, point_mask=torch.tensor([[True, False, False, False]]))
        alone = m(img, pts[:, :1])
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    torch.testing.assert_close(masked[:, :1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["one_way", "full"])
@pytest.mark.parametrize("image_size", [None, 56])
def test_padding_pixels_do_not_matter(attention: str, image_size: int | None) -> None:
    m = make(attention=attention, image_size=image_size)
    g = torch.Generator().manual_seed(4)
    img = torch.randn(1, 3, 56, 56, generator=g)
    pts = rand_points(g, 1, 6)
    vs = torch.tensor([[40, 30]])
    img2 = img.clone()
    img2[:, :, 40:] = 100.0
    img2[:, :, :, 30:] = -50.0
    with torch.no_grad():
        a, b = m(img, pts, vs), m(img2, pts, vs)
        full = m(img, pts)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, full, atol=1e-4)


def test_aspect_ratio_kept_and_patch_multiple() -> None:
    m = make(image_size=64)
    x, vs = m.prepare_images(torch.randn(2, 3, 120, 120), torch.tensor([[100, 50], [30, 120]]))
    assert vs.tolist() == [[64, 32], [16, 64]]
    assert x.shape[-2:] == (70, 70)  # multiple of 14 covering 64
    assert (x[0, :, :, 32:] == 0).all() and (x[1, :, 16:] == 0).all()


def test_sample_pos_embed_hits_cell_centres() -> None:
    m = make(point_encoding="sample_pos_embed", image_size=None)
    with torch.no_grad():
        _, _, _, grids, vs, pos_grids, _ = m._embed_patches(torch.randn(1, 3, 56, 42), None)
        # centre of patch (row 2, col 1) of a 56x42 image with patch 14
        pt = torch.tensor([[[(2 * 35 / 56) - 1, (2 * 21 / 42) - 1]]])
        tok = m._embed_points(pt, vs, grids, pos_grids)
    expected = m.backbone.cls_token[0, 0] + pos_grids[0][2, 1]
    torch.testing.assert_close(tok[0, 0], expected)


def test_registers_and_gradients() -> None:
    torch.manual_seed(0)
    m = PointViT(3, "vit_small_patch14_reg4_dinov2", image_size=42, model_kwargs=TINY)
    img, pts = torch.randn(2, 3, 50, 40), torch.rand(2, 5, 2) * 2 - 1
    logits = m(img, pts, torch.tensor([[50, 40], [30, 40]]))
    assert logits.shape == (2, 5, 3)
    logits.sum().backward()
    assert m.point_embed.weight.grad is not None and m.point_embed.weight.grad.abs().sum() > 0
    assert m.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- checkpoints
def timm_state_dict(**kw) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(1)
    return timm.create_model(NAME, pretrained=False, num_classes=0, **{**TINY, **kw}).state_dict()


def test_load_timm_dinov2_state_dict(tmp_path) -> None:
    sd = timm_state_dict(img_size=28)  # 2x2 pos grid, resampled to the model's 4x4 on load
    sd["mask_token"] = torch.zeros(1, 64)  # original DINOv2 naming marker, dropped by timm's filter
    path = tmp_path / "dinov2.pth"
    torch.save(sd, path)
    m = make(checkpoint_path=str(path))
    rep = m.load_report
    assert rep.format == "timm"
    assert sorted(rep.missing) == ["head.bias", "head.weight", "point_embed.weight"]
    assert rep.unexpected == [] and rep.reinitialized == []
    torch.testing.assert_close(m.backbone.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    assert m.backbone.pos_embed.shape == (1, 17, 64)


def test_load_vitp_lightning_checkpoint_and_head(tmp_path) -> None:
    src = make()
    ckpt = {"state_dict": {**{f"classifier.{k}": v for k, v in src.state_dict().items()},
                           "proposer.w": torch.zeros(3)}, "epoch": 3}
    path = tmp_path / "vitp.ckpt"
    torch.save(ckpt, path)
    torch.manual_seed(5)
    m = PointViT(5, NAME, image_size=56, model_kwargs=TINY, checkpoint_path=str(path))
    assert m.load_report.format == "vitp" and m.load_report.missing == []
    assert m.load_report.skipped == ["proposer.w"]
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="reinit_heads_on_mismatch"):
        PointViT(7, NAME, image_size=56, model_kwargs=TINY, checkpoint_path=str(path))
    m7 = PointViT(None, NAME, image_size=56, model_kwargs=TINY, checkpoint_path=str(path))
    m7.set_num_classes(7, reinit_heads=True)  # what ViTPModule(reinit_heads_on_mismatch=True) does
    assert m7.load_report.reinitialized == ["head.weight", "head.bias"]
    torch.testing.assert_close(m7.point_embed.weight, src.point_embed.weight)


@pytest.mark.parametrize("corruption", ["missing", "shape", "extra_block"])
def test_corrupted_checkpoint_raises(tmp_path, corruption: str) -> None:
    sd = timm_state_dict()
    if corruption == "missing":
        del sd["blocks.0.attn.qkv.weight"]
    elif corruption == "shape":
        sd["blocks.1.mlp.fc1.weight"] = torch.zeros(10, 64)
    else:
        sd["blocks.5.norm1.weight"] = torch.ones(64)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match="refusing"):
        make(checkpoint_path=str(path))


def test_load_original_dinov2_registers_naming(tmp_path) -> None:
    """Original DINOv2-with-registers naming (register_tokens, pos_embed with a CLS entry)."""
    import timm

    torch.manual_seed(2)
    ref = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, **TINY)
    sd = {k: v for k, v in ref.state_dict().items() if k not in ("reg_token", "pos_embed")}
    cls_pos = torch.randn(1, 1, 64)
    sd["register_tokens"] = ref.reg_token.detach()
    sd["cls_token"] = ref.cls_token.detach() - cls_pos
    sd["pos_embed"] = torch.cat([cls_pos, ref.pos_embed.detach()], dim=1)
    sd["mask_token"] = torch.zeros(1, 64)
    torch.save({"model": sd}, tmp_path / "orig.pth")
    m = PointViT(3, "vit_small_patch14_reg4_dinov2", image_size=56, model_kwargs=TINY,
                 checkpoint_path=str(tmp_path / "orig.pth"))
    assert m.load_report.unexpected == []
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.backbone.state_dict()[k], v)


def test_sincos_pos_embed_init_gives_distinct_positions():
    from vitp.classifiers.point_vit import sincos_2d

    table = sincos_2d(4, 5, 16)
    assert table.shape == (20, 16)
    sim = table @ table.T
    assert torch.all(sim.diagonal() >= sim.max(dim=1).values - 1e-5)  # each position is its own best match
    m = PointViT(3, model_name="vit_tiny_patch16_224", image_size=64, pos_embed_init="sincos",
                 model_kwargs={"depth": 1, "img_size": 64, "embed_dim": 16, "num_heads": 2})
    assert torch.allclose(m.backbone.pos_embed[0, 1:], sincos_2d(4, 4, 16))
    with pytest.raises(ValueError, match="pos_embed_init"):
        PointViT(3, model_name="vit_tiny_patch16_224", pos_embed_init="nope",
                 model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2})


def test_drop_path_rate_drops_residual_branches_in_training_only() -> None:
    """``drop_path_rate``: timm's stochastic depth in the backbone (rising to the rate in the last
    block); training forwards differ from run to run, evaluation is deterministic."""
    from timm.layers import DropPath

    m = make(drop_path_rate=0.5)
    rates = [blk.drop_path1.drop_prob for blk in m.backbone.blocks if isinstance(blk.drop_path1, DropPath)]
    assert rates and max(rates) == pytest.approx(0.5)
    assert not any(isinstance(blk.drop_path1, DropPath) for blk in make().backbone.blocks)
    g = torch.Generator().manual_seed(0)
    images, points = torch.randn(2, 3, 56, 56, generator=g), rand_points(g, 2, 4)
    valid = torch.tensor([[56, 56], [56, 56]])
    with torch.no_grad():
        torch.testing.assert_close(m(images, points, valid), m(images, points, valid))
        m.train()
        torch.manual_seed(1)
        first = m(images, points, valid)
        torch.manual_seed(2)
        assert not torch.allclose(first, m(images, points, valid))
