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


def _log_object_void(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., K + 1]`` logits -> (log p(object), log p(no object)), each ``[...]``."""
    log_p = F.log_softmax(logits, dim=-1)
    return torch.logsumexp(log_p[..., :-1], dim=-1), log_p[..., -1]


def fuse_class_probs(
    class_logits: torch.Tensor | None,
    point_logits: torch.Tensor,
    alpha: float = 0.4,
    mask_quality: torch.Tensor | None = None,
    point_no_object: bool = False,
) -> torch.Tensor:
    """Fused class probabilities ``float[B, Q, K + 1]`` (last column = no object; rows sum to 1).

    class_logits: proposer logits ``[B, Q, K + 1]``, or None for a class-agnostic proposer (then the
        point classifier decides the class alone and ``p_void = 1 - mask_quality``, or 0 without it).
    point_logits: point-classifier logits ``[B, Q, K]``, or ``[B, Q, K + 1]`` with
        ``point_no_object`` (a classifier trained with a no-object class).
    alpha: weight of the point classifier (0 = proposer only, 1 = point classifier only).
    mask_quality: optional ``[B, Q]`` in [0, 1], the objectness of a class-agnostic proposer.
    point_no_object: the last column of ``point_logits`` is "no object". The class distribution is
        then fused over the first K columns, and the objectness too: the same weighted geometric
        mean of the two Bernoulli distributions (object, no object). Without it the proposer's own
        no-object probability is kept, as in the reference.

    Long because each branch (with or without the proposer's classes, objectness, no-object logit) is
    written out once, next to the formula it implements.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    point_logits = point_logits.float()
    K = point_logits.shape[-1] - int(point_no_object)
    log_pt = F.log_softmax(point_logits[..., :K], dim=-1)
    if class_logits is None:
        log_p = log_pt
        if mask_quality is None:
            log_obj_prop = log_void_prop = None
        else:
            q = mask_quality.float().clamp(1e-6, 1 - 1e-6)
            log_obj_prop, log_void_prop = q.log(), (1 - q).log()
    else:
        class_logits = class_logits.float()
        if class_logits.shape[-1] != K + 1 or class_logits.shape[:-1] != point_logits.shape[:-1]:
            raise ValueError(
                f"class_logits {tuple(class_logits.shape)} must have K + 1 = {K + 1} columns for "
                f"point_logits {tuple(point_logits.shape)} (point_no_object={point_no_object})"
            )
        log_prop = F.log_softmax(class_logits[..., :K], dim=-1)
        if alpha == 1.0:
            log_p = log_pt
        elif alpha == 0.0:
            log_p = log_prop
        else:
            log_p = F.log_softmax((1 - alpha) * log_prop + alpha * log_pt, dim=-1)
        log_obj_prop, log_void_prop = _log_object_void(class_logits)
    if point_no_object:
        log_obj_pt, log_void_pt = _log_object_void(point_logits)
        if log_obj_prop is None:
            log_obj, log_void = log_obj_pt, log_void_pt
        else:
            log_obj = (1 - alpha) * log_obj_prop + alpha * log_obj_pt
            log_void = (1 - alpha) * log_void_prop + alpha * log_void_pt
        p_void = torch.sigmoid(log_void - log_obj)
    elif log_void_prop is None:
        p_void = torch.zeros(point_logits.shape[:-1], device=point_logits.device)
    elif class_logits is None:
        p_void = 1 - mask_quality.float().clamp(0, 1)  # type: ignore[union-attr]
    else:
        p_void = F.softmax(class_logits, dim=-1)[..., K]
    p = log_p.exp() * (1 - p_void)[..., None]
    return torch.cat([p, p_void[..., None]], dim=-1)
