"""The tokens of ``PointViT`` and its patch pass: patch tokens of each image's valid region (with their
position embedding resampled to the image's patch grid), point tokens (a linear position code, or the
patch token / position embedding sampled at the point), and the patch pass that caches the keys /
values the points read (:class:`PatchCache`).

Functions of the model (as ``vitp.classifiers.trunk``), so ``point_vit.py`` keeps the model's
structure and forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from vitp.classifiers.vit_ops import block_forward, block_kv, block_query, self_slot_kv, self_slot_mask

if TYPE_CHECKING:  # pragma: no cover
    from vitp.classifiers.point_vit import PointViT
    from vitp.structures import PointMasks


@dataclass
class PatchCache:
    """Result of ``PointViT.encode_patches``: per block keys / values of the patch tokens.

    kv: one ``(k, v)`` per block from ``start_block`` on, in the self-slot layout of
        ``vit_ops.self_slot_kv``: ``[B, heads, N + 1, e]`` (N = prefix/register tokens + patches,
        e = head_dim + 1 rounded up to a multiple of 8; the patch keys / values are ``[..., :N, :head_dim]``).
    key_mask: ``bool[B, N]``, False for padding patches.
    slot_mask: ``bool[B, 1, 1, N + 1]`` attention mask for the self-slot layout, None when no padding.
    start_block: first block the points run (``PointViT.point_start_block``).
    grid: ``(Gh, Gw)`` patch grid of the padded batch.
    image_grids: ``long[B, 2]`` patch grid covering each image's valid region.
    valid_sizes: ``long[B, 2]`` valid region of each image after rescaling (pixels).
    pos_grids: per image ``[gh, gw, D]`` patch position embedding (for ``sample_pos_embed``).
    images: the rescaled, padded input images ``[B, 3, H', W']`` (kept only with a glimpse).
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    key_mask: torch.Tensor
    grid: tuple[int, int]
    image_grids: torch.Tensor
    valid_sizes: torch.Tensor
    pos_grids: list[torch.Tensor]
    slot_mask: torch.Tensor | None = None
    start_block: int = 0
    images: torch.Tensor | None = None


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """``float[height * width, dim]`` 2-D sine-cosine position table (half the channels per axis)."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding needs a dim divisible by 4, got {dim}")
    freq = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4)))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord[:, None] * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def num_pos_prefix(model: "PointViT") -> int:
    be = model.backbone
    return 0 if getattr(be, "no_embed_class", False) else int(be.num_prefix_tokens)

def cls_pos(model: "PointViT") -> torch.Tensor | None:
    """The pretrained CLS position embedding ``[D]`` (None when the model has none)."""
    be = model.backbone
    if be.pos_embed is None or be.cls_token is None or num_pos_prefix(model) == 0:
        return None
    return be.pos_embed[0, 0]

def pos_grid(model: "PointViT", gh: int, gw: int) -> torch.Tensor | None:
    be = model.backbone
    fixed = getattr(model, "_fixed_pos", None)
    if fixed is not None and tuple(fixed.shape[:2]) == (gh, gw):
        return fixed
    if be.pos_embed is None:
        return None
    pe = resample_abs_pos_embed(
        be.pos_embed, new_size=(gh, gw), old_size=be.patch_embed.grid_size,
        num_prefix_tokens=num_pos_prefix(model),
    )
    return pe[0, num_pos_prefix(model):].reshape(gh, gw, -1)

def embed_patches(model: "PointViT", images: torch.Tensor, valid_sizes: torch.Tensor | None):
    be = model.backbone
    x, vs = model.prepare_images(images, valid_sizes)
    B = x.shape[0]
    ph, pw = model.patch_size
    tok = be.patch_embed(x)  # [B, Gh, Gw, D]
    Gh, Gw = tok.shape[1], tok.shape[2]
    grids = torch.stack([(vs[:, 0] + ph - 1) // ph, (vs[:, 1] + pw - 1) // pw], dim=1)
    pos = tok.new_zeros(B, Gh, Gw, tok.shape[-1])
    pos_grids: list[torch.Tensor] = []
    cache: dict[tuple[int, int], torch.Tensor | None] = {}
    for b, (gh, gw) in enumerate(grids.tolist()):
        if (gh, gw) not in cache:
            cache[(gh, gw)] = pos_grid(model, gh, gw)
        g = cache[(gh, gw)]
        if g is not None:
            pos[b, :gh, :gw] = g.to(pos.dtype)
        else:
            g = tok.new_zeros(gh, gw, tok.shape[-1])
        # what a point samples: the position embedding, or the whole input patch token
        pos_grids.append(tok[b, :gh, :gw] + g.to(tok.dtype) if model.point_encoding == "sample_patch" else g)
    rows = torch.arange(Gh, device=x.device)
    cols = torch.arange(Gw, device=x.device)
    patch_mask = (rows[None, :, None] < grids[:, 0, None, None]) & (cols[None, None, :] < grids[:, 1, None, None])
    patches = (tok + pos).reshape(B, Gh * Gw, -1)
    prefix = []
    if getattr(be, "reg_token", None) is not None:
        reg = be.reg_token
        if num_pos_prefix(model):
            start = 1 if be.cls_token is not None else 0
            reg = reg + be.pos_embed[:, start : start + reg.shape[1]]
        prefix.append(reg.expand(B, -1, -1))
    seq = torch.cat(prefix + [patches], dim=1)
    seq = be.norm_pre(be.pos_drop(seq))
    n_prefix = seq.shape[1] - Gh * Gw
    key_mask = torch.cat([patch_mask.new_ones(B, n_prefix), patch_mask.reshape(B, -1)], dim=1)
    return seq, key_mask, (Gh, Gw), grids, vs, pos_grids, x

def embed_points(model: "PointViT", points: torch.Tensor, vs: torch.Tensor, grids: torch.Tensor,
                  pos_grids: list[torch.Tensor]) -> torch.Tensor:
    be = model.backbone
    B, P, _ = points.shape
    D = model.embed_dim
    points = points.to(be.pos_embed.dtype)
    if model.point_encoding == "linear":
        tok = model.point_embed(points)
        base = cls_pos(model)
        if base is None and be.cls_token is not None:
            base = be.cls_token[0, 0]
    else:
        ph, pw = model.patch_size
        toks = []
        for b in range(B):
            # pixel position in the rescaled frame -> normalised over the image's patch grid
            ext = torch.stack([grids[b, 0] * ph, grids[b, 1] * pw]).to(points.dtype)
            yx = (points[b] + 1) / 2 * vs[b].to(points.dtype) / ext * 2 - 1
            g = pos_grids[b].permute(2, 0, 1)[None].to(points.dtype)  # [1, D, gh, gw]
            s = F.grid_sample(g, yx.flip(-1)[None, None], mode="bilinear", padding_mode="border",
                              align_corners=False)
            toks.append(s[0, :, 0].t())
        tok = torch.stack(toks) if toks else points.new_zeros(B, P, D)
        if model.point_offset is not None:
            base = model.point_offset
        else:
            base = be.cls_token[0, 0] if be.cls_token is not None else None
    if base is not None:
        tok = tok + base
    return be.norm_pre(be.pos_drop(tok))

def joining_grids(model: "PointViT", seq: torch.Tensor, grid: tuple[int, int], grids: torch.Tensor,
                   pos_grids: list[torch.Tensor]) -> list[torch.Tensor]:
    """With ``sample_patch`` and points joining at block k > 0: per image the patch tokens
    entering block k (``[gh, gw, D]``), which the points sample; otherwise ``pos_grids``."""
    if model.point_encoding != "sample_patch" or model.point_start_block == 0:
        return pos_grids
    Gh, Gw = grid
    patches = seq[:, seq.shape[1] - Gh * Gw:].reshape(seq.shape[0], Gh, Gw, -1)
    return [patches[b, :gh, :gw] for b, (gh, gw) in enumerate(grids.tolist())]


def block_op(model: "PointViT", name: str):
    """``block_forward`` / ``block_query``, wrapped in ``torch.compile`` when ``compile_blocks`` is set."""
    fn = {"block_forward": block_forward, "block_query": block_query}[name]
    if not model.compile_blocks:
        return fn
    if name not in model._compiled:
        model._compiled[name] = torch.compile(fn, dynamic=True)
    return model._compiled[name]

def patch_mask(key_mask: torch.Tensor) -> torch.Tensor | None:
    """Attention mask of the patch tokens; None without padding (SDPA's mask-free kernels)."""
    return None if bool(key_mask.all()) else key_mask[:, None, None, :]

def patch_blocks(model: "PointViT", seq: torch.Tensor, mask: torch.Tensor | None, stop: int) -> torch.Tensor:
    """Run the patch tokens alone through blocks ``0..stop-1``."""
    fwd = block_op(model, "block_forward")
    for blk in model.backbone.blocks[:stop]:
        seq, _ = fwd(blk, seq, mask)
    return seq


def patch_pass(model: "PointViT", images: torch.Tensor, valid_sizes: torch.Tensor | None) -> PatchCache:
    """The patch pass in the valid-region frame: patch tokens through every block, keeping the keys /
    values of blocks ``point_start_block..`` for the points."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.freeze_backbone):
        seq, key_mask, grid, grids, vs, pos_grids, prepared = embed_patches(model, images, valid_sizes)
        k0 = model.point_start_block
        mask = patch_mask(key_mask)
        seq = patch_blocks(model, seq, mask, k0)
        pos_grids = joining_grids(model, seq, grid, grids, pos_grids)
        blocks = model.backbone.blocks
        fwd = block_op(model, "block_forward")
        kv = []
        for i in range(k0, len(blocks)):
            if i == len(blocks) - 1:  # the last block's output is never used: keys / values only
                kv.append(self_slot_kv(*block_kv(blocks[i], seq)))
                break
            seq, blk_kv = fwd(blocks[i], seq, mask, return_kv=True)
            kv.append(self_slot_kv(*blk_kv))
    return PatchCache(kv=kv, key_mask=key_mask, grid=grid, image_grids=grids, valid_sizes=vs,
                      pos_grids=pos_grids, slot_mask=None if mask is None else self_slot_mask(key_mask),
                      start_block=k0, images=prepared if model.point_glimpse is not None else None)


def query_points(model: "PointViT", cache: PatchCache, points: torch.Tensor,
                 point_masks: "PointMasks | None" = None) -> torch.Tensor:
    """``PointViT.classify_points``: the point tokens through blocks ``start_block..`` reading the
    cached keys / values (chunked over the points), then the head."""
    B, P, _ = points.shape
    if P == 0:
        return points.new_zeros(B, 0, model.num_classes)
    chunk = model.point_chunk_size or P
    query = block_op(model, "block_query")
    blocks = model.backbone.blocks[cache.start_block:]
    out = []
    locality = model.point_locality
    n_prefix = cache.key_mask.shape[1] - cache.grid[0] * cache.grid[1]
    for s in range(0, P, chunk):
        pts = points[:, s : s + chunk]
        x = embed_points(model, pts, cache.valid_sizes, cache.image_grids, cache.pos_grids)
        glimpse = model._glimpse(cache.images, pts, cache.valid_sizes,
                                None if point_masks is None else point_masks.points(s, s + chunk))
        if glimpse is not None:
            x = x + glimpse.to(x.dtype)
        index = None if locality is None else locality.offset_index(
            pts.float(), cache.valid_sizes, model.patch_size, cache.grid)
        for j, (blk, kv) in enumerate(zip(blocks, cache.kv)):
            mask = cache.slot_mask if index is None else locality.attention_bias(
                cache.start_block + j, index, cache.key_mask, n_prefix)
            x = query(blk, x, kv, mask)
        out.append(model._head(x, glimpse))
    return torch.cat(out, dim=1)


def full_attention(model: "PointViT", images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor | None,
                   point_mask: torch.Tensor | None, point_masks: "PointMasks | None") -> torch.Tensor:
    """``PointViT.forward`` in ``full`` mode (the reference): [points ; patches] through the blocks
    from ``point_start_block`` with full self-attention; ``point_mask`` hides padding points."""
    B, P, _ = points.shape
    seq, key_mask, grid, grids, vs, pos_grids, prepared = embed_patches(model, images, valid_sizes)
    seq = patch_blocks(model, seq, patch_mask(key_mask), model.point_start_block)
    pos_grids = joining_grids(model, seq, grid, grids, pos_grids)
    pts = embed_points(model, points, vs, grids, pos_grids)
    glimpse = model._glimpse(prepared, points, vs, point_masks)
    if glimpse is not None:
        pts = pts + glimpse.to(pts.dtype)
    pmask = torch.ones(B, P, dtype=torch.bool, device=seq.device) if point_mask is None else point_mask.bool()
    x = torch.cat([pts, seq], dim=1)
    mask = torch.cat([pmask, key_mask], dim=1)[:, None, None, :]
    fwd = block_op(model, "block_forward")
    for blk in model.backbone.blocks[model.point_start_block:]:
        x, _ = fwd(blk, x, mask)
    return model._head(x[:, :P], glimpse)
