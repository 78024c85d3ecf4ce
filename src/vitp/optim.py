"""Optimisation: parameter groups (no weight decay on norms/biases/tokens, layer-wise lr decay,
point-embed lr) and the optimiser with its warm-up + cosine schedule."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from vitp.settings import OptimizerSettings

_NO_DECAY = re.compile(r"(bias|norm|pos_embed|cls_token|reg_token|point_embed|\.gamma)")
_BLOCK = re.compile(r"\bblocks\.(\d+)\.")


def _layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for everything after the blocks."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(key in name for key in ("patch_embed", "pos_embed", "cls_token", "reg_token")):
        return 0
    return depth + 1


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    point_embed_lr: float | None = None,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` grouped by (lr, weight decay).

    Layer-wise decay applies to parameters of a ViT (names containing ``blocks.<i>.``): block i of
    a depth-L ViT gets ``lr * layer_decay ** (L - i)``, embeddings ``layer_decay ** (L + 1)``.
    Parameters whose name contains ``point_embed`` use ``point_embed_lr`` when given.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depth = max((int(m.group(1)) + 1 for n, _ in named if (m := _BLOCK.search(n))), default=0)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in named:
        decay = 0.0 if (param.ndim <= 1 or _NO_DECAY.search(name)) else weight_decay
        if point_embed_lr is not None and "point_embed" in name:
            lr = point_embed_lr
        elif layer_decay != 1.0 and "classifier." in name:
            lr = base_lr * layer_decay ** (depth + 1 - _layer_id(name, depth))
        else:
            lr = base_lr
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, settings: "OptimizerSettings", total_steps: int) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``settings``: AdamW or SGD over
    :func:`build_param_groups`, stepped per batch with a linear warm-up then cosine decay to 0 over
    ``total_steps``."""
    groups = build_param_groups(model, base_lr=settings.lr, weight_decay=settings.weight_decay,
                                point_embed_lr=settings.point_embed_lr, layer_decay=settings.layer_decay)
    if not groups:
        raise ValueError("no trainable parameters")
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    total = max(1, int(total_steps))
    warmup = min(settings.warmup_steps, total - 1)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
