"""Transformer blocks of the native (SeNaTra-style) backbone: local attention inside a stage.

Tokens are kept as ``float[B, N, C]`` with a known grid ``(h, w)`` (row-major). Attention is
windowed (non-overlapping ``window x window`` windows, Swin-style shifted windows on every second
block, padding tokens masked out of the keys); a grid no larger than one window is attended
globally. A depthwise 3x3 convolution at the start of each stage (a conditional position encoding)
gives the blocks position information; plain torch ops plus timm's ``Mlp``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


def _window_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """``bool[nW, T, T]`` key mask (True = may attend) for windows of the grid padded to ``ws``.

    Keys in padding or (with ``shift``) in a region that wrapped around are masked; a token always
    sees itself, so no row is empty. Returns the mask and the padded grid size.
    """
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    region = torch.zeros(hp, wp, device=device)
    if shift:
        cnt = 0
        for ys in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for xs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                region[ys, xs] = cnt
                cnt += 1
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    if shift:
        valid = valid.roll((-shift, -shift), (0, 1))
    region, valid = _windows(region[None, ..., None], ws)[..., 0], _windows(valid[None, ..., None], ws)[..., 0]
    mask = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]
    mask |= torch.eye(ws * ws, dtype=torch.bool, device=device)
    return mask, hp, wp


def _windows(g: torch.Tensor, ws: int) -> torch.Tensor:
    """``[B, hp, wp, C]`` -> ``[B * nW, ws * ws, C]``."""
    b, hp, wp, c = g.shape
    g = g.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return g.reshape(-1, ws * ws, c)


def _unwindows(t: torch.Tensor, b: int, hp: int, wp: int, ws: int) -> torch.Tensor:
    c = t.shape[-1]
    t = t.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(b, hp, wp, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) windows of the token grid."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.window, self.shifted = heads, window, shifted
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        ws = self.window
        if h <= ws and w <= ws:  # the whole grid fits in one window: global attention
            ws_h, ws_w, shift = h, w, 0
            mask, hp, wp = None, h, w
        else:
            ws_h = ws_w = ws
            shift = ws // 2 if self.shifted else 0
            mask, hp, wp = _window_mask(h, w, ws, shift, x.device)
        g = x.view(b, h, w, c)
        if (hp, wp) != (h, w):
            g = F.pad(g, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            g = g.roll((-shift, -shift), (1, 2))
        t = _windows(g, ws_h) if mask is not None else g.reshape(b, h * w, c)
        bw, tt, _ = t.shape
        qkv = self.qkv(t).view(bw, tt, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[None].expand(b, -1, -1, -1).reshape(bw, 1, tt, tt)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        o = self.proj(o.transpose(1, 2).reshape(bw, tt, c))
        if mask is None:
            return o
        g = _unwindows(o, b, hp, wp, ws_h)
        if shift:
            g = g.roll((shift, shift), (1, 2))
        return g[:, :h, :w].reshape(b, n, c)


class Block(nn.Module):
    """Pre-norm transformer block: windowed attention + MLP, both residual."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, shifted)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    """Conditional position encoding (depthwise 3x3 conv, residual) + ``depth`` blocks."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, window, shifted=bool(i % 2), mlp_ratio=mlp_ratio) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self.pos(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x, h, w)
        return self.norm(x)
