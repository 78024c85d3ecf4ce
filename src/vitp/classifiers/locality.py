"""Relative-position attention bias of point queries over patch keys.

A point token that must learn, from scratch, where its own patch and its neighbours are attends
everywhere at first and reads the image's dominant texture. :class:`PointLocalityBias` adds to each
point's attention logit on patch ``j`` a learned bias ``table[block, head, offset]`` where
``offset`` is the patch's position relative to the point, rounded to whole patches and clamped
to a window of ``radius`` patches (farther patches share one bias). Heads start from Gaussian
priors of different widths (one head without any), so from the first step some heads read the
point's immediate surroundings and others the wider context: a shape read-out around the point.
Patches never see points, so the patch pass is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class PointLocalityBias(nn.Module):
    """Learned bias ``[blocks, heads, (2R+1)^2 + 1]`` of point-to-patch attention by relative offset.

    Args:
        num_blocks: blocks of the ViT (one table each).
        num_heads: attention heads.
        radius: R, the window half-size in patches; offsets beyond share the last bucket.
    """

    def __init__(self, num_blocks: int, num_heads: int, radius: int = 4) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius = radius
        size = 2 * radius + 1
        r = torch.arange(-radius, radius + 1, dtype=torch.float)
        d2 = (r[:, None] ** 2 + r[None, :] ** 2).flatten()
        d2 = torch.cat([d2, torch.tensor([float(2 * (radius + 1) ** 2)])])  # the "far" bucket
        sigmas = [0.75 * 2.0**h for h in range(num_heads - 1)] + [float("inf")]
        prior = torch.stack([-d2 / (2 * s * s) for s in sigmas])  # [heads, size^2 + 1]
        self.table = nn.Parameter(prior[None].repeat(num_blocks, 1, 1).clone())
        self.size = size

    def offset_index(self, points: torch.Tensor, valid_sizes: torch.Tensor, patch_size: tuple[int, int],
                     grid: tuple[int, int]) -> torch.Tensor:
        """``long[B, P, Gh * Gw]``: the bucket of every (point, patch) pair.

        ``points [B, P, 2]`` (y, x in [-1, 1] of each image's valid region), ``valid_sizes long[B, 2]``
        of the rescaled images in pixels, ``grid`` the padded batch's patch grid (raster order).
        """
        gh, gw = grid
        scale = valid_sizes.to(points.dtype) / torch.tensor(patch_size, dtype=points.dtype, device=points.device)
        pos = (points + 1) / 2 * scale[:, None, :]  # point in patch units
        rows = torch.arange(gh, device=points.device, dtype=points.dtype) + 0.5
        cols = torch.arange(gw, device=points.device, dtype=points.dtype) + 0.5
        dy = torch.round(rows[None, None, :] - pos[..., 0:1]).long()  # [B, P, gh]
        dx = torch.round(cols[None, None, :] - pos[..., 1:2]).long()  # [B, P, gw]
        R = self.radius
        inside = (dy.abs() <= R)[..., :, None] & (dx.abs() <= R)[..., None, :]
        index = (dy + R).clamp(0, 2 * R)[..., :, None] * self.size + (dx + R).clamp(0, 2 * R)[..., None, :]
        far = self.size * self.size
        return torch.where(inside, index, torch.full_like(index, far)).flatten(2)

    def attention_bias(self, block: int, index: torch.Tensor, key_mask: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """Float mask ``[B, heads, P, N + 1]`` for ``vit_ops.block_query`` in the self-slot layout:
        the block's bias on the patch keys, 0 on prefix tokens and on the point's own slot, -inf on
        padding patches. ``key_mask bool[B, N]`` (N = prefix + patches)."""
        # a gather along the bucket axis, not ``table[:, index]``: the backward of advanced indexing
        # accumulates with atomic adds on a multi-threaded CPU, so training would not repeat bit for
        # bit; gather's backward (a scatter-add owned by one thread per head) does, and is also ~3x
        # faster than an ``F.embedding`` lookup's backward on CPU (6 vs 51 ms per block, 1 thread)
        table = self.table[block]  # [heads, buckets]
        H = table.shape[0]
        B, P, N = index.shape
        bias = table.gather(1, index.reshape(1, -1).expand(H, -1)).reshape(H, B, P, N).permute(1, 0, 2, 3)
        zeros = bias.new_zeros(B, H, P, num_prefix)
        slot = bias.new_zeros(B, H, P, 1)
        bias = torch.cat([zeros, bias, slot], dim=-1)
        visible = torch.cat([key_mask, key_mask.new_ones(B, 1)], dim=1)[:, None, None, :]
        return bias.masked_fill(~visible, float("-inf"))
