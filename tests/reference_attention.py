"""A straightforward masked-attention reference of ``vitp.classifiers.vit_ops.one_way_attention``
(tests only: O(P^2) memory)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_one_way_attention(
    q: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Straightforward reference of :func:`one_way_attention`: keys [context ; all queries] with a
    ``[P, N + P]`` boolean mask (identity on the query part). O(P^2) memory; for tests."""
    k_ctx, v_ctx = kv
    B, H, P, _ = q.shape
    N = k_ctx.shape[2]
    k = torch.cat([k_ctx, k_self], dim=2)
    v = torch.cat([v_ctx, v_self], dim=2)
    if key_mask is None:
        key_mask = torch.ones(B, N, dtype=torch.bool, device=q.device)
    eye = torch.eye(P, dtype=torch.bool, device=q.device)
    mask = torch.cat([key_mask[:, None, :].expand(B, P, N), eye.expand(B, P, P)], dim=2)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
