"""PointViT's fast one-way attention, late-joining points (``point_start_block``), mixed precision and
``torch.compile``, each checked against a straightforward masked-attention reference."""

from __future__ import annotations

import time

import pytest
import torch

from vitp.classifiers import PointViT
from reference_attention import masked_one_way_attention
from vitp.classifiers.vit_ops import block_forward, one_way_attention, self_slot_kv, self_slot_mask

TINY3 = dict(embed_dim=64, depth=3, num_heads=2, img_size=56, init_values=1.0)
NAME = "vit_small_patch14_dinov2"


def make(**kw) -> PointViT:
    torch.manual_seed(0)
    kw.setdefault("model_kwargs", TINY3)
    kw.setdefault("image_size", None)
    return PointViT(5, NAME, **kw).eval()


def reference(m: PointViT, images, points, valid, one_way: bool = True) -> torch.Tensor:
    """Points join at ``m.point_start_block``; [points ; patches] with one explicit boolean
    ``[P + N, P + N]`` mask per image. ``one_way``: patches never read points, and points read only
    the visible patches and themselves; else full attention over points and visible patches."""
    seq, key_mask, _, grids, vs, pos_grids, _ = m._embed_patches(images, valid)
    B, N, _ = seq.shape
    k = m.point_start_block
    for blk in m.backbone.blocks[:k]:
        seq, _ = block_forward(blk, seq, key_mask[:, None, None, :])
    pts = m._embed_points(points, vs, grids, pos_grids)
    P = pts.shape[1]
    mask = torch.zeros(B, P + N, P + N, dtype=torch.bool)
    mask[:, :, P:] = key_mask[:, None, :]
    mask[:, :P, :P] = torch.eye(P, dtype=torch.bool) if one_way else True
    mask[:, P:, :P] = not one_way
    x = torch.cat([pts, seq], dim=1)
    for blk in m.backbone.blocks[k:]:
        x, _ = block_forward(blk, x, mask[:, None])
    return m._head(x[:, :P])


def batch(g: torch.Generator, p: int = 9):
    """Two images of odd, different sizes (padding patches in the batch) and p points each."""
    images = torch.zeros(2, 3, 53, 47)
    images[0, :, :53, :33] = torch.randn(3, 53, 33, generator=g)
    images[1, :, :29, :47] = torch.randn(3, 29, 47, generator=g)
    valid = torch.tensor([[53, 33], [29, 47]])
    return images, torch.rand(2, p, 2, generator=g) * 2 - 1, valid


# --------------------------------------------------------------------------- the attention itself
@pytest.mark.parametrize("shape", [(2, 3, 7, 13, 10), (1, 2, 1, 5, 16), (3, 1, 11, 2, 7)])
@pytest.mark.parametrize("padding", [False, True])
def test_one_way_attention_equals_masked(shape, padding: bool) -> None:
    B, H, P, N, d = shape
    g = torch.Generator().manual_seed(sum(shape))
    q, ks, vs = (torch.randn(B, H, P, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k, v = (torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    key_mask = torch.ones(B, N, dtype=torch.bool)
    if padding:
        key_mask[0, N // 2 :] = False  # image 0: half its keys are padding
    fast = one_way_attention(q, ks, vs, self_slot_kv(k, v), self_slot_mask(key_mask))
    ref = masked_one_way_attention(q, ks, vs, (k, v), key_mask)
    torch.testing.assert_close(fast, ref)
    w = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    grads_fast = torch.autograd.grad((fast * w).sum(), (q, ks, vs, k, v))
    grads_ref = torch.autograd.grad((ref * w).sum(), (q, ks, vs, k, v))
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b)


def test_slot_layout() -> None:
    k, v = torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64)
    ks, vs = self_slot_kv(k, v)
    assert ks.shape == (1, 2, 5, 72)  # head dim + 1, next multiple of 8
    torch.testing.assert_close(ks[:, :, :4, :64], k)
    assert self_slot_mask(torch.ones(2, 4, dtype=torch.bool)) is None  # no padding: mask-free kernels
    assert self_slot_mask(torch.tensor([[True, False]])).tolist() == [[[[True, False, True]]]]


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("start", [0, 1, 2])
@pytest.mark.parametrize("encoding", ["linear", "sample_pos_embed"])
def test_one_way_model_equals_masked_reference(start: int, encoding: str) -> None:
    m = make(point_start_block=start, point_encoding=encoding)
    g = torch.Generator().manual_seed(start)
    images, points, valid = batch(g)
    with torch.no_grad():
        fast = m(images, points, valid)
        ref = reference(m, images, points, valid)
        m.point_chunk_size = 4
        chunked = m(images, points, valid)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("start", [0, 2])
def test_full_model_equals_reference(start: int) -> None:
    m = make(point_start_block=start, attention="full")
    images, points, valid = batch(torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(m(images, points, valid), reference(m, images, points, valid, one_way=False),
                                   atol=1e-5, rtol=1e-5)


def test_gradients_equal_reference() -> None:
    m = make(point_start_block=1).train()
    images, points, valid = batch(torch.Generator().manual_seed(8), p=5)
    grads = []
    for fn in (lambda: m(images, points, valid), lambda: reference(m, images, points, valid)):
        m.zero_grad()
        fn().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "backbone.blocks.0.attn.qkv.weight" in grads[0]  # patches below the start block still learn
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_start_block_changes_result_not_checkpoint_keys() -> None:
    base = make()
    late = make(point_start_block=2)
    assert list(late.state_dict()) == list(base.state_dict())
    late.load_state_dict(base.state_dict())
    images, points, valid = batch(torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert not torch.allclose(late(images, points, valid), base(images, points, valid), atol=1e-4)
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="point_start_block"):
            make(point_start_block=bad)


def test_many_points_one_pass_bounded_cache() -> None:
    """Thousands of points in one call; the cache holds only the blocks the points run."""
    m = make(point_start_block=1, point_chunk_size=None)
    images, points, valid = batch(torch.Generator().manual_seed(10), p=3000)
    with torch.no_grad():
        cache = m.encode_patches(images, valid)
        assert len(cache.kv) == 2 and cache.start_block == 1
        out = m.classify_points(cache, points)
        m.point_chunk_size = 1024
        torch.testing.assert_close(m.classify_points(cache, points), out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 1234:1235], m.classify_points(cache, points[:, 1234:1235]),
                                   atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- precision / compile
def _close_in_low_precision(low: torch.Tensor, ref: torch.Tensor) -> None:
    assert low.dtype in (torch.float32, torch.bfloat16, torch.float16)
    err = (low.float() - ref).abs().max().item()
    assert err <= 0.05 * ref.abs().max().item() + 1e-3, err
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("attention", ["one_way", "full"])
def test_bf16_autocast_cpu_matches_fp32(attention: str) -> None:
    m = make(attention=attention, point_start_block=1)
    images, points, valid = batch(torch.Generator().manual_seed(11), p=40)
    with torch.no_grad():
        ref = m(images, points, valid)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(images, points, valid)
    _close_in_low_precision(low, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast is for CUDA only (no GPU here)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda_matches_fp32(dtype: torch.dtype) -> None:
    m = make(point_start_block=1).cuda()
    images, points, valid = (t.cuda() for t in batch(torch.Generator().manual_seed(12), p=40))
    with torch.no_grad():
        ref = m(images, points, valid)
        with torch.autocast("cuda", dtype=dtype):
            low = m(images, points, valid)
    _close_in_low_precision(low, ref)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    m = make(point_start_block=1)
    mc = make(point_start_block=1, compile_blocks=True)
    images, points, valid = batch(torch.Generator().manual_seed(13), p=17)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = mc(images, points, valid)
    except Exception as exc:  # no compiler / unsupported platform: the option stays usable elsewhere
        pytest.skip(f"torch.compile cannot run here: {type(exc).__name__}: {str(exc)[:200]}")
    with torch.no_grad():
        torch.testing.assert_close(out, m(images, points, valid), atol=1e-4, rtol=1e-4)
        again = mc(images, points[:, :5], valid)  # another point count: no failure (dynamic shapes)
    torch.testing.assert_close(again, out[:, :5], atol=1e-4, rtol=1e-4)
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")


def test_bf16_autocast_cpu_training_step() -> None:
    """``--trainer.precision bf16-mixed`` on CPU: forward + backward under autocast, gradients close
    to fp32 ones."""
    m = make(point_start_block=1).train()
    images, points, valid = batch(torch.Generator().manual_seed(14), p=20)
    grads = []
    for low in (False, True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            logits = m(images, points, valid)
        logits.float().square().mean().backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in m.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all()
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.98, cos
