"""The optimiser settings (``OptimizerSettings`` -> ``vitp.optim.build_optimizer``): parameter groups,
layer-wise decay, the point-embedding lr, SGD, and the warm-up + cosine schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitp.optim import build_optimizer
from vitp.settings import OptimizerSettings


class TinyModel(nn.Module):
    """Names as in ViTPModule: ``classifier.blocks.<i>`` (a depth-2 ViT), its ``point_embed`` and head."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Module()
        self.classifier.patch_embed = nn.Linear(4, 4)
        self.classifier.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.classifier.norm = nn.LayerNorm(4)
        self.classifier.point_embed = nn.Parameter(torch.zeros(1, 4))
        self.classifier.head = nn.Linear(4, 3)


def lr_and_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_point_embed_lr_and_no_decay_groups():
    model = TinyModel()
    settings = OptimizerSettings(lr=1.0, weight_decay=0.05, point_embed_lr=0.3, layer_decay=0.5, warmup_steps=0)
    optimizer = build_optimizer(model, settings, total_steps=10)["optimizer"]
    groups = lr_and_decay(optimizer, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    # depth 2: block i gets 0.5 ** (2 - i), the embeddings 0.5 ** 3, what follows the blocks 1
    assert groups["classifier.blocks.0.weight"] == (0.25, 0.05)
    assert groups["classifier.blocks.1.weight"] == (0.5, 0.05)
    assert groups["classifier.patch_embed.weight"] == (0.125, 0.05)
    assert groups["classifier.head.weight"] == (1.0, 0.05)
    assert groups["classifier.blocks.1.bias"] == (0.5, 0.0)  # biases and norms: no weight decay
    assert groups["classifier.norm.weight"] == (1.0, 0.0)
    assert groups["classifier.point_embed"] == (0.3, 0.0)


def test_sgd_with_momentum_and_the_warmup_cosine_schedule():
    model = TinyModel()
    built = build_optimizer(model, OptimizerSettings(optimizer="sgd", lr=0.1, momentum=0.8, warmup_steps=3),
                            total_steps=13)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.8
    assert built["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warm-up over 3 steps
    assert lrs[3:] == sorted(lrs[3:], reverse=True) and lrs[-1] < 0.01  # cosine decay towards 0


def test_a_model_without_trainable_parameters_is_refused():
    model = TinyModel().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimizerSettings(), total_steps=1)
