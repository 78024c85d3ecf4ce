"""Combining the proposer's and the point classifier's class distributions (ViT-P fusion).

Reference (OneFormer path): ``p = softmax(log(p_prop^(1-a) * p_pt^a))`` over the K classes, where
``p_prop`` is the proposer's softmax over its first K columns (void column dropped *before* the
softmax) and ``p_pt`` the point classifier's softmax; the result is ``[p * (1 - p_void), p_void]``
with ``p_void`` the proposer's own no-object probability (softmax over all K + 1 columns). All of
it is computed with log-softmax arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_class_probs(
    class_logits: torch.Tensor | None,
    point_logits: torch.Tensor,
    alpha: float = 0.4,
    mask_quality: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused class probabilities ``float[B, Q, K + 1]`` (last column = no object; rows sum to 1).

    class_logits: proposer logits ``[B, Q, K + 1]``, or None for a class-agnostic proposer (then the
        point classifier decides alone and ``p_void = 1 - mask_quality``, or 0 without it).
    point_logits: point-classifier logits ``[B, Q, K]``.
    alpha: weight of the point classifier (0 = proposer only, 1 = point classifier only; the
        proposer's no-object probability is kept in both cases).
    mask_quality: optional ``[B, Q]`` in [0, 1], used only when ``class_logits`` is None.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    point_logits = point_logits.float()
    K = point_logits.shape[-1]
    log_pt = F.log_softmax(point_logits, dim=-1)
    if class_logits is None:
        log_p = log_pt
        if mask_quality is None:
            p_void = torch.zeros(point_logits.shape[:-1], device=point_logits.device)
        else:
            p_void = 1 - mask_quality.float().clamp(0, 1)
    else:
        class_logits = class_logits.float()
        if class_logits.shape[-1] != K + 1 or class_logits.shape[:-1] != point_logits.shape[:-1]:
            raise ValueError(
                f"class_logits {tuple(class_logits.shape)} must be point_logits {tuple(point_logits.shape)} "
                "plus one no-object column"
            )
        log_prop = F.log_softmax(class_logits[..., :K], dim=-1)
        if alpha == 1.0:
            log_p = log_pt
        elif alpha == 0.0:
            log_p = log_prop
        else:
            log_p = F.log_softmax((1 - alpha) * log_prop + alpha * log_pt, dim=-1)
        p_void = F.softmax(class_logits, dim=-1)[..., K]
    p = log_p.exp() * (1 - p_void)[..., None]
    return torch.cat([p, p_void[..., None]], dim=-1)


class Fusion(nn.Module):
    """Holds the fusion weight(s): ``alpha`` and optional per-task overrides (e.g. ``{"panoptic": 0.5}``)."""

    def __init__(self, alpha: float = 0.4, alpha_per_task: dict[str, float] | None = None) -> None:
        super().__init__()
        for a in [alpha, *(alpha_per_task or {}).values()]:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {a}")
        self.alpha = alpha
        self.alpha_per_task = dict(alpha_per_task or {})

    def alpha_for(self, task: str | None = None) -> float:
        return self.alpha_per_task.get(task, self.alpha) if task is not None else self.alpha

    def forward(
        self,
        class_logits: torch.Tensor | None,
        point_logits: torch.Tensor,
        task: str | None = None,
        mask_quality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return fuse_class_probs(class_logits, point_logits, self.alpha_for(task), mask_quality)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, alpha_per_task={self.alpha_per_task}"
