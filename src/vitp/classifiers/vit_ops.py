"""Low-level pieces of ``PointViT`` built from timm ViT sub-layers (no monkey-patching).

* ``block_forward`` runs one timm ``Block`` with a boolean attention mask and can return the block's
  keys / values (used to cache the patch pass).
* ``block_query`` runs one block for *query* tokens that attend to cached patch keys / values plus
  themselves only (the "one_way" attention of vitp), in one ``scaled_dot_product_attention`` call
  (``one_way_attention``: the query's own key rides along as one extra "self slot" key, so no
  ``P x P`` mask is built and fused flash / memory-efficient kernels apply).
* ``prepare_images`` crops each image to its valid region, optionally rescales it (long side ==
  ``image_size``, aspect ratio kept) and pads the batch to a common multiple of the patch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_block(block: nn.Module) -> None:
    """Raise when a timm block does not have the standard pre-norm ``Block`` / ``Attention`` layout."""
    needed = ["norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"]
    missing = [n for n in needed if not hasattr(block, n)]
    attn = getattr(block, "attn", None)
    if attn is not None:
        missing += [f"attn.{n}" for n in ("qkv", "proj", "num_heads", "head_dim") if not hasattr(attn, n)]
    if missing:
        raise NotImplementedError(
            f"PointViT needs timm pre-norm Blocks with a fused qkv Attention; {type(block).__name__} "
            f"lacks {missing}"
        )


def _qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [B, N, C]`` -> q, k, v ``[B, heads, N, head_dim]`` (qk-norm applied)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q_norm = getattr(attn, "q_norm", None)
    k_norm = getattr(attn, "k_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    return q, k, v


def _attn_out(attn: nn.Module, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Attention output ``o [B, heads, N, d]`` -> projected ``[B, N, C]`` (gate / scale-norm aware)."""
    B, _, N, _ = o.shape
    o = o.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    norm = getattr(attn, "norm", None)
    if norm is not None:
        o = norm(o)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    o = attn.proj(o)
    proj_drop = getattr(attn, "proj_drop", None)
    if proj_drop is not None:
        o = proj_drop(o)
    return o


def _dropout_p(attn: nn.Module) -> float:
    drop = getattr(attn, "attn_drop", None)
    return float(drop.p) if (drop is not None and attn.training) else 0.0


def _scale(attn: nn.Module) -> float | None:
    scale = getattr(attn, "scale", None)
    return float(scale) if scale is not None else None


def _mlp_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def block_forward(
    block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, return_kv: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Same maths as timm ``Block.forward(x, attn_mask)`` (``attn_mask`` bool, True = attend).

    Returns the new tokens and, when ``return_kv``, this block's keys / values of ``x``.
    """
    attn = block.attn
    h = block.norm1(x)
    q, k, v = _qkv(attn, h)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=_dropout_p(attn), scale=_scale(attn))
    x = x + block.drop_path1(block.ls1(_attn_out(attn, h, o)))
    return _mlp_branch(block, x), ((k, v) if return_kv else None)


def block_kv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys / values ``[B, heads, N, d]`` of one block's attention for tokens ``x`` (no attention run)."""
    _, k, v = _qkv(block.attn, block.norm1(x))
    return k, v


def self_slot_dim(head_dim: int) -> int:
    """Head dim of the keys / values extended with the point's own slot (next multiple of 8, so
    fused GPU kernels keep their aligned fast paths)."""
    return (head_dim + 1 + 7) // 8 * 8


def self_slot_kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Context keys / values ``[B, heads, N, d]`` -> ``[B, heads, N + 1, e]`` with one extra "self slot".

    The context tokens get zeros in the channels ``d..e``; the appended slot token is the unit vector
    on channel ``d`` in both keys and values. With a query that carries its own score ``q . k_self``
    on channel ``d`` (see :func:`one_way_attention`), the slot's attention logit is exactly the
    query's self-attention logit and the slot's output channel ``d`` is exactly its softmax weight.
    """
    B, H, _, d = k.shape
    e = self_slot_dim(d)
    slot = k.new_zeros(1, 1, 1, e)
    slot[..., d] = 1
    k = torch.cat([F.pad(k, (0, e - d)), slot.to(k.dtype).expand(B, H, 1, e)], dim=2)
    v = torch.cat([F.pad(v, (0, e - d)), slot.to(v.dtype).expand(B, H, 1, e)], dim=2)
    return k, v


def self_slot_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``bool[B, N]`` context key mask -> ``bool[B, 1, 1, N + 1]`` (slot always visible), or None when
    every key is visible (lets SDPA pick its mask-free flash kernels)."""
    if key_mask is None or bool(key_mask.all()):
        return None
    ones = key_mask.new_ones(key_mask.shape[0], 1)
    return torch.cat([key_mask, ones], dim=1)[:, None, None, :]


def one_way_attention(
    q: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    kv_slot: tuple[torch.Tensor, torch.Tensor],
    slot_mask: torch.Tensor | None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax over [context keys ; own key] for each query, in one ``scaled_dot_product_attention``.

    ``q, k_self, v_self [B, heads, P, d]`` (queries and their own keys / values), ``kv_slot`` from
    :func:`self_slot_kv` of the context keys / values, ``slot_mask`` from :func:`self_slot_mask`.
    Returns ``[B, heads, P, d]``. A query never sees the other queries; cost and memory are
    O(P x N) (no P x P mask), and flash / memory-efficient kernels apply.
    """
    k, v = kv_slot
    B, H, P, d = q.shape
    e = k.shape[-1]
    k = k.to(q.dtype)
    v = v.to(q.dtype)
    own = (q * k_self.to(q.dtype)).sum(-1, keepdim=True)
    q = torch.cat([q, own, q.new_zeros(B, H, P, e - d - 1)], dim=-1)
    scale = d ** -0.5 if scale is None else scale
    if slot_mask is not None and slot_mask.is_floating_point():  # an additive bias (e.g. locality)
        slot_mask = slot_mask.to(q.dtype)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=slot_mask, dropout_p=dropout_p, scale=scale)
    return o[..., :d] + o[..., d : d + 1] * v_self.to(o.dtype)


def block_query(
    block: nn.Module,
    xq: torch.Tensor,
    kv_slot: tuple[torch.Tensor, torch.Tensor],
    slot_mask: torch.Tensor | None,
) -> torch.Tensor:
    """One block for query tokens ``xq [B, P, C]`` that attend to [cached context keys ; themselves].

    ``kv_slot`` / ``slot_mask``: the block's cached context keys / values and key mask in the
    self-slot layout (:func:`self_slot_kv`, :func:`self_slot_mask`). A query never sees the other
    queries, so its output does not depend on which other queries are processed with it.
    """
    attn = block.attn
    h = block.norm1(xq)
    q, k_self, v_self = _qkv(attn, h)
    o = one_way_attention(q, k_self, v_self, kv_slot, slot_mask, scale=_scale(attn), dropout_p=_dropout_p(attn))
    x = xq + block.drop_path1(block.ls1(_attn_out(attn, h, o)))
    return _mlp_branch(block, x)


def resized_size(h: int, w: int, image_size: int | None) -> tuple[int, int]:
    """Size of a valid region ``(h, w)`` after rescaling its long side to ``image_size``."""
    if image_size is None:
        return h, w
    s = image_size / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def prepare_images(
    images: torch.Tensor,
    valid_sizes: torch.Tensor | list[tuple[int, int]] | None,
    image_size: int | None,
    patch_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each image to its valid region, rescale (long side == ``image_size``, aspect kept) and
    zero-pad all to a common size that is a multiple of the patch size.

    Returns ``(images float[B, 3, H', W'], new_valid_sizes long[B, 2])``. Padding pixels are zero, so
    nothing outside an image's valid region can influence the result.
    """
    B, _, H, W = images.shape
    if valid_sizes is None:
        valid_sizes = [[H, W]] * B
    vs = [(int(h), int(w)) for h, w in torch.as_tensor(valid_sizes).tolist()]
    if len(vs) != B:
        raise ValueError(f"{len(vs)} valid sizes for {B} images")
    new = [resized_size(h, w, image_size) for h, w in vs]
    ph, pw = patch_size
    Hn = int(math.ceil(max(h for h, _ in new) / ph) * ph)
    Wn = int(math.ceil(max(w for _, w in new) / pw) * pw)
    out = images.new_zeros(B, images.shape[1], Hn, Wn)
    for b, ((h, w), (nh, nw)) in enumerate(zip(vs, new)):
        if not (0 < h <= H and 0 < w <= W):
            raise ValueError(f"valid size {(h, w)} of image {b} does not fit the frame {(H, W)}")
        crop = images[b : b + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            antialias = nh < h or nw < w
            crop = F.interpolate(crop, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
        out[b, :, :nh, :nw] = crop[0]
    return out, torch.tensor(new, dtype=torch.long, device=images.device)


def square_frame(images: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """EoMT's input frame: the padded batch resized (aspect kept) so its long side is ``size``, then
    padded bottom / right to ``size x size``. Returns the square batch and the scale factor."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    fh, fw = max(1, round(h * scale)), max(1, round(w * scale))
    x = images if (fh, fw) == (h, w) else F.interpolate(images, size=(fh, fw), mode="bilinear",
                                                        align_corners=False, antialias=scale < 1)
    return F.pad(x, (0, size - fw, 0, size - fh)), scale


def check_backbone(backbone: nn.Module, model_name: str) -> None:
    """Raise unless ``backbone`` is a timm VisionTransformer PointViT can run (every block checked
    by :func:`check_block`, no patch dropout)."""
    for name in ("patch_embed", "blocks", "pos_embed", "cls_token"):
        if not hasattr(backbone, name):
            raise NotImplementedError(f"{model_name}: PointViT needs a timm VisionTransformer (no {name})")
    for blk in backbone.blocks:
        check_block(blk)
    if not isinstance(getattr(backbone, "patch_drop", nn.Identity()), nn.Identity):
        raise ValueError("patch dropout is not supported by PointViT (it would drop masked patches)")
