"""Parameter groups: no weight decay on norms/biases/tokens, layer-wise lr decay, point-embed lr."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

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
