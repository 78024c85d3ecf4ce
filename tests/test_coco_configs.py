"""The COCO ViT-P configs, run offline on the real COCO sample: the hub ids are replaced by tiny
random models saved locally in the same formats (HF `save_pretrained` directory with COCO's 133
class names; a timm DINOv2-named state dict), so the real loading code paths run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process

CONFIGS = ["vitp_b14_mask2former_swinl", "vitp_b14_oneformer_swinl"]


@pytest.mark.parametrize("name", CONFIGS)
def test_coco_vitp_config_offline(name: str, coco_sample_root: Path, tmp_path: Path, monkeypatch):
    import vitp.proposers
    from vitp.data import read_dataset_info

    monkeypatch.chdir(tmp_path)
    info = read_dataset_info(coco_sample_root, "val")
    proposer_cls = vitp.proposers.OneFormerProposer if "oneformer" in name else vitp.proposers.Mask2FormerProposer
    proposer_dir = tmp_path / "proposer"
    proposer_cls(preset="tiny", class_names=list(info.class_names)).save_pretrained(proposer_dir)

    vit_kwargs = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 518}
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **vit_kwargs)
    ckpt = tmp_path / "dinov2_tiny.pth"
    torch.save(vit.state_dict(), ckpt)

    config = PROJECT_ROOT / "configs" / "coco" / "panoptic" / f"{name}.yaml"
    export = tmp_path / "export"
    vitp_in_process(
        "test", "--config", str(config), "--data.init_args.root", str(coco_sample_root),
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.logger", "false",
        "--data.init_args.image_size", "256", "--data.init_args.num_workers", "0",
        "--model.init_args.proposer.init_args.model", str(proposer_dir),
        "--model.init_args.classifier.init_args.model_name", "vit_small_patch14_dinov2",
        "--model.init_args.classifier.init_args.pretrained", "false",
        "--model.init_args.classifier.init_args.checkpoint_path", str(ckpt),
        "--model.init_args.classifier.init_args.image_size", "126",
        "--model.init_args.classifier.init_args.model_kwargs", json.dumps(vit_kwargs),
        "--model.init_args.output.export_dir", str(export),
    )
    metrics = json.loads((export / "metrics.json").read_text())
    for key in ("pq", "pq_proposer", "pq_oracle", "miou", "map"):
        assert key in metrics
    panoptic = json.loads((export / "panoptic.json").read_text())
    used = {s["category_id"] for a in panoptic["annotations"] for s in a["segments_info"]}
    assert used <= set(info.category_ids)  # original COCO ids, not contiguous ones
