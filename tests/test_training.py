"""One-batch fit/test (`fast_dev_run`) of every trainable YAML and `predict` on an image folder
(the `vitp` CLI in-process), and the default run's three stages chained through files exactly as
`scripts/demo.py` chains them (`vitp` subprocesses, end to end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from test_cli import run_vitp, vitp_in_process

SMALL = ["--data.init_args.image_size", "128", "--data.init_args.num_workers", "0",
         "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2"]
TINY_CLASSIFIER = ["--model.init_args.classifier.init_args.image_size", "128"]


@pytest.mark.parametrize("name", ["mask2former_small", "oneformer_small"])
def test_proposer_config_fast_dev_run(name: str, tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = PROJECT_ROOT / "configs" / "synthetic" / "proposer" / f"{name}.yaml"
    vitp_in_process("fit", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                    "--model.init_args.proposer.init_args.preset", "tiny", "--trainer.fast_dev_run", "1")
    saved = tmp_path / "outputs" / "synthetic" / f"proposer_{name.split('_')[0]}" / "hf_model"
    assert (saved / "config.json").is_file(), "SaveProposer did not write the trained proposer"
    vitp_in_process("test", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                    "--model.init_args.proposer.init_args.model", str(saved), "--trainer.fast_dev_run", "1",
                    "--trainer.callbacks", "[]")


def test_vitp_oracle_masks_config_fast_dev_run(tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_oracle_masks.yaml"
    vitp_in_process("fit", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                    *TINY_CLASSIFIER, "--trainer.fast_dev_run", "1")


def test_default_run_stages_chain_through_files(tiny_coco_root: Path, tmp_path: Path):
    """Stage 1 saves a proposer, stage 2 loads it frozen and trains ViT-P, test reports 3 variants."""
    data = ["--data.init_args.root", str(tiny_coco_root), *SMALL]
    limit = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "1"]
    proposer_cfg = PROJECT_ROOT / "configs" / "synthetic" / "proposer" / "mask2former_small.yaml"
    vitp_cfg = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"
    run_vitp("fit", "--config", str(proposer_cfg), *data, *limit,
             "--model.init_args.proposer.init_args.preset", "tiny", cwd=tmp_path)
    run_vitp("fit", "--config", str(vitp_cfg), *data, *limit, *TINY_CLASSIFIER, cwd=tmp_path)
    ckpt = tmp_path / "outputs" / "synthetic" / "vitp_tiny_mask2former" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    export = tmp_path / "export"
    run_vitp("test", "--config", str(vitp_cfg), *data, *TINY_CLASSIFIER, "--ckpt_path", str(ckpt),
             "--model.init_args.output.export_dir", str(export), cwd=tmp_path)
    metrics = json.loads((export / "metrics.json").read_text())
    for key in ("pq", "pq_proposer", "pq_oracle", "miou", "miou_proposer", "map_oracle"):
        assert key in metrics, sorted(metrics)
        assert 0.0 <= metrics[key] <= 100.0
    assert (export / "panoptic.json").is_file() and any((export / "panoptic").glob("*.png"))


@pytest.mark.slow
def test_demo_quick(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "demo.py"), "--quick",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "proposer + ViT-P" in proc.stdout
    # stage 2 also writes the shareable folder (Segmenter.from_pretrained)
    assert (tmp_path / "outputs" / "synthetic" / "vitp_tiny_mask2former" / "pretrained" / "vitp_config.yaml").is_file()


def test_predict_on_image_folder_writes_pngs_json_and_overlays(tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "my_images"
    images.mkdir()
    for src in sorted((tiny_coco_root / "val2017").glob("*.jpg"))[:3]:
        (images / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "pred"
    config = PROJECT_ROOT / "configs" / "synthetic" / "proposer" / "mask2former_small.yaml"
    vitp_in_process("predict", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                    "--model.init_args.proposer.init_args.preset", "tiny",
                    "--model.init_args.inference.object_mask_threshold", "0.0", "--model.init_args.inference.overlap_threshold", "0.0",
                    "--data.init_args.path", str(images), "--model.init_args.output.export_dir", str(out))
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert len(panoptic["annotations"]) == 3
    for name in ("panoptic", "semantic", "overlays/panoptic", "overlays/semantic"):
        assert len(list((out / name).iterdir())) == 3, name
