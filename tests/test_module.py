"""LightningModule pieces: parameter groups and mixed precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from test_cli import run_vitp
from test_training import SMALL, TINY_CLASSIFIER
from vitp.classifiers import PointViT
from vitp.module import ViTPModule
from vitp.optim import build_param_groups
from vitp.proposers import OracleProposer
from vitp.structures import DatasetInfo

INFO = DatasetInfo(("a", "b", "c"), (1, 5, 9), (True, True, False))


def tiny_module(**kwargs) -> ViTPModule:
    clf = PointViT(model_name="vit_tiny_patch16_224", image_size=32,
                   model_kwargs={"depth": 3, "embed_dim": 32, "num_heads": 2, "img_size": 32})
    return ViTPModule(OracleProposer(class_agnostic=True), clf, dataset_info=INFO, **kwargs)


def group_lr(groups, param) -> float:
    return next(g["lr"] for g in groups if any(p is param for p in g["params"]))


def test_param_groups_layer_decay_point_embed_lr_and_no_decay():
    module = tiny_module()
    groups = build_param_groups(module, base_lr=1.0, weight_decay=0.05, point_embed_lr=0.01, layer_decay=0.5)
    vit = module.classifier.backbone
    assert group_lr(groups, module.classifier.point_embed.weight) == 0.01
    assert group_lr(groups, module.classifier.head.weight) == 1.0
    assert group_lr(groups, vit.blocks[2].mlp.fc1.weight) == 0.5
    assert group_lr(groups, vit.blocks[0].mlp.fc1.weight) == 0.125
    assert group_lr(groups, vit.patch_embed.proj.weight) == 0.0625
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(vit.blocks[0].mlp.fc1.weight)] == 0.05
    assert decay[id(vit.blocks[0].norm1.weight)] == 0.0 and decay[id(vit.pos_embed)] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in module.parameters() if p.requires_grad)


def test_frozen_classifier_has_no_trainable_params_and_stays_in_eval():
    module = tiny_module(train_classifier=False)
    assert not any(p.requires_grad for p in module.parameters())
    module.train()
    assert not module.classifier.training


def test_bf16_mixed_fit_and_validate_on_cpu(tiny_coco_root: Path, tmp_path: Path):
    config = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_oracle_masks.yaml"
    run_vitp("fit", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
             *TINY_CLASSIFIER, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--trainer.check_val_every_n_epoch", "1", "--trainer.log_every_n_steps", "1", cwd=tmp_path)
    logs = sorted(tmp_path.glob("outputs/synthetic/vitp_tiny_oracle_masks/lightning_logs/*/metrics.csv"))
    header = logs[-1].read_text().splitlines()[0]
    for key in ("val/point_acc", "val/point_acc_macro", "val/point_acc_thing", "val/point_acc_stuff", "val/pq",
                "val/miou", "train/point_ce"):
        assert key in header, header
