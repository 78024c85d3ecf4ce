"""Every Cityscapes / ADE20K / custom COCO-format config: a one-batch ``vitp fit`` and ``vitp test``
(the CLI in-process) on tiny datasets in the official layouts. Hub models are replaced by tiny random
ones saved locally in the same formats (HF ``save_pretrained`` directory with the dataset's class
names, a timm DINOv2-named state dict), so the real loading code runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process
from test_data_ade20k import prepare_script, write_ade20k
from test_data_cityscapes import write_cityscapes
from test_data_coco_format import write_custom

CONFIGS = PROJECT_ROOT / "configs"
FAST = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--trainer.fast_dev_run", "1", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
        "--data.init_args.eval_batch_size", "2"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("datasets")
    ade = write_ade20k(base / "ADEChallengeData2016", n=2)
    prepare_script().main([str(ade)])
    return {"cityscapes": write_cityscapes(base / "cityscapes", per_city=1), "ade20k": ade,
            "custom": write_custom(base / "custom", n=2)}


def tiny_hub_models(tmp_path: Path, class_names: list[str]) -> list[str]:
    """CLI overrides replacing the hub proposer and the DINOv2 classifier by tiny local copies."""
    from vitp.proposers import Mask2FormerProposer

    proposer_dir = tmp_path / "proposer"
    Mask2FormerProposer(preset="tiny", class_names=class_names).save_pretrained(proposer_dir)
    vit_kwargs = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 518}
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **vit_kwargs)
    torch.save(vit.state_dict(), tmp_path / "dinov2_tiny.pth")
    classifier = "--model.init_args.classifier.init_args."
    return ["--model.init_args.proposer.init_args.model", str(proposer_dir),
            classifier + "model_name", "vit_small_patch14_dinov2", classifier + "pretrained", "false",
            classifier + "checkpoint_path", str(tmp_path / "dinov2_tiny.pth"), classifier + "image_size", "70",
            classifier + "model_kwargs", json.dumps(vit_kwargs)]


HUB_CONFIGS = {
    "cityscapes/panoptic/vitp_b14_mask2former_swinl.yaml": ("cityscapes", ["--data.init_args.eval_image_size", "64"]),
    "cityscapes/semantic/vitp_b14_mask2former_swinl_coarse.yaml": ("cityscapes", ["--data.init_args.eval_image_size", "64"]),
    "ade20k/semantic/vitp_b14_mask2former_swinl.yaml": ("ade20k", []),
    "ade20k/panoptic/vitp_b14_mask2former_swinl.yaml": ("ade20k", []),
}


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_dataset_config_one_batch_fit_and_test(name: str, roots: dict[str, Path], tmp_path: Path, monkeypatch):
    from vitp.data.ade20k import ade20k_semantic_info
    from vitp.data.cityscapes import cityscapes_dataset_info
    from vitp.data.coco_format import read_categories

    monkeypatch.chdir(tmp_path)
    dataset, extra = HUB_CONFIGS[name]
    config = ["--config", str(CONFIGS / name), "--data.init_args.root", str(roots[dataset]),
              "--data.init_args.image_size", "64", *extra]
    info = (cityscapes_dataset_info() if dataset == "cityscapes" else ade20k_semantic_info() if "semantic" in name
            else read_categories(roots["ade20k"] / "ade20k_panoptic_val.json"))
    overrides = tiny_hub_models(tmp_path, list(info.class_names))
    vitp_in_process("fit", *config, *FAST, *overrides)
    export = tmp_path / "export"
    vitp_in_process("test", *config, *FAST, *overrides, "--model.init_args.output.export_dir", str(export))
    metrics = json.loads((export / "metrics.json").read_text())
    assert "miou" in metrics and ("pq" in metrics) == ("panoptic" in name)


def test_cityscapes_oracle_is_perfect_at_full_resolution(roots: dict[str, Path], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "export"
    vitp_in_process("test", "--config", str(CONFIGS / "cityscapes/panoptic/oracle.yaml"),
                    "--data.init_args.root", str(roots["cityscapes"]), "--data.init_args.eval_image_size", "48",
                    "--data.init_args.num_workers", "0", "--model.init_args.output.export_dir", str(export))
    metrics = json.loads((export / "metrics.json").read_text())
    for key in ("pq", "pq_th", "pq_st", "miou", "map"):
        assert metrics[key] == pytest.approx(100.0), (key, metrics)
    semantic = sorted((export / "semantic").glob("*.png"))
    assert len(semantic) == 2 and semantic[0].name == "frankfurt_000000_000019_leftImg8bit.png"
    from PIL import Image

    with Image.open(semantic[0]) as im:
        assert im.size == (64, 32)  # predictions exported at the full resolution


def test_custom_coco_format_config_with_boxes(roots: dict[str, Path], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ["--config", str(CONFIGS / "coco/custom/tiny_oracle_masks_boxes.yaml"),
              "--data.init_args.root", str(roots["custom"]), "--data.init_args.image_size", "48",
              "--model.init_args.classifier.init_args.image_size", "48"]
    vitp_in_process("fit", *config, *FAST)
    export = tmp_path / "export"
    vitp_in_process("test", *config, *FAST, "--model.init_args.output.export_dir", str(export))
    assert {"pq", "miou", "map"} <= set(json.loads((export / "metrics.json").read_text()))
