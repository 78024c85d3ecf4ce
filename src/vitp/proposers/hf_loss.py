"""The Mask2Former set-prediction loss, built from the public pieces of HF's loss module.

HF's ``Mask2FormerLoss`` / ``OneFormerLoss`` expose a Hungarian ``matcher`` and ``loss_masks``
(sigmoid cross-entropy and dice on sampled points); the class term is computed here, so it works
in any output label space (a pretrained label space mapped onto the dataset's, or one "object"
class), and the mask terms are divided by our DDP-averaged ``num_masks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_TERMS = ("loss_cross_entropy", "loss_mask", "loss_dice")


def class_loss(
    logits: torch.Tensor, class_labels: Sequence[torch.Tensor], indices, no_object_weight: float
) -> torch.Tensor:
    """Cross-entropy of matched queries to their class, others to no-object (weighted by
    ``no_object_weight``), as HF's ``loss_labels`` but in the label space of ``logits``."""
    logits = logits.float()
    b, q, k1 = logits.shape
    weight = torch.ones(k1, device=logits.device, dtype=logits.dtype)
    weight[-1] = float(no_object_weight)
    target = torch.full((b, q), k1 - 1, dtype=torch.long, device=logits.device)
    for i, ((src, tgt), labels) in enumerate(zip(indices, class_labels)):
        if len(src):
            target[i, src.to(logits.device)] = labels.to(logits.device)[tgt.to(logits.device)]
    return F.cross_entropy(logits.transpose(1, 2), target, weight=weight)


def layer_losses(
    criterion, masks: torch.Tensor, logits: torch.Tensor, mask_labels: Sequence[torch.Tensor],
    class_labels: Sequence[torch.Tensor], num_masks: torch.Tensor, no_object_weight: float,
) -> dict[str, torch.Tensor]:
    """Unweighted ``LOSS_TERMS`` of one decoder layer (``masks [B,Q,h,w]``, ``logits [B,Q,K+1]``)."""
    indices = criterion.matcher(masks, logits, mask_labels, class_labels)
    out = dict(criterion.loss_masks(masks, mask_labels, indices, num_masks))
    out["loss_cross_entropy"] = class_loss(logits, class_labels, indices, no_object_weight)
    return out


def set_prediction_loss(
    criterion,
    config,
    final: tuple[torch.Tensor, torch.Tensor],
    intermediate: Sequence[tuple[torch.Tensor, torch.Tensor]],
    mask_labels: Sequence[torch.Tensor],
    class_labels: Sequence[torch.Tensor],
    num_masks: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Weighted ``LOSS_TERMS`` of the ``final`` (masks, class logits) and their sum over the
    ``intermediate`` decoder layers as ``loss_aux`` (weights: ``config.class_weight``,
    ``mask_weight``, ``dice_weight``; no-object weight: ``config.no_object_weight``)."""
    weights = dict(zip(LOSS_TERMS, (config.class_weight, config.mask_weight, config.dice_weight)))

    def weighted(masks: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = layer_losses(criterion, masks, logits, mask_labels, class_labels, num_masks,
                             config.no_object_weight)
        return {k: terms[k] * w for k, w in weights.items()}

    out = weighted(*final)
    aux = final[0].new_zeros(())
    for masks, logits in intermediate:
        aux = aux + sum(weighted(masks, logits).values())
    out["loss_aux"] = aux
    return out
