"""The benchmark scripts run end to end on tiny random models (so they cannot rot unnoticed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import torch

from conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"
SMALL = ["--data.init_args.image_size", "64", "--data.init_args.num_workers", "0",
         "--model.init_args.classifier.init_args.image_size", "64"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_end_to_end(tiny_coco_root: Path, tmp_path: Path, capsys):
    """A tiny Mask2Former saved with save_pretrained + a ViT-P checkpoint of the default config, both
    outside the working directory, given by path; every variant is timed and the table printed."""
    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import Mask2FormerProposer

    torch.manual_seed(0)
    info = read_dataset_info(tiny_coco_root, "val")
    proposer_dir = tmp_path / "stage1" / "hf_model"
    Mask2FormerProposer(preset="tiny", num_classes=info.num_classes, class_names=list(info.class_names),
                        is_thing=list(info.is_thing)).save_pretrained(proposer_dir)
    args = ["--config", str(CONFIG), "--data.init_args.root", str(tiny_coco_root), "--trainer.logger", "false",
            "--model.init_args.proposer.init_args.model", str(proposer_dir), *SMALL]
    built = cli(args, run=False)
    ckpt = tmp_path / "vitp.ckpt"
    torch.save({"state_dict": built.model.state_dict(), "pytorch-lightning_version": L.__version__,
                "epoch": 0, "global_step": 0}, ckpt)

    workdir = tmp_path / "work"  # nothing of the run here: every path comes from the arguments
    workdir.mkdir()
    out = _script("bench_end_to_end").main([
        "--workdir", str(workdir), "--ckpt", str(ckpt), "--proposer", str(proposer_dir),
        "--data-root", str(tiny_coco_root), "--images", "2", "--reps", "1",
        "--large", "--large-model", "vit_tiny_patch16_224", "--large-size", "32", "--large-starts", "0", "11",
        "--", *SMALL])
    names = {"proposer", "vitp", "propose", "pointvit", "post proposer", "post vitp", "timm",
             "vitp L k0", "pointvit L k11", "timm L"}
    assert names <= set(out["cpu"])
    assert all(t > 0 for t in out["wall"].values())
    printed = capsys.readouterr().out
    assert "segments kept per image: proposer" in printed
    assert "| vitp / proposer |" in printed and "| pointvit L k11 / timm L |" in printed
    assert "| vitp / vitp all candidates |" in printed and "post-processed at full size: proposer" in printed

    out = _script("bench_cpu_options").main([
        "--workdir", str(workdir), "--ckpt", str(ckpt), "--proposer", str(proposer_dir),
        "--data-root", str(tiny_coco_root), "--images", "1", "--reps", "1", *SMALL])
    assert {"fp32, 1 thread", "fp32, 2 threads", "bf16 autocast", "channels_last"} == set(out["cpu"])
    assert "| channels_last |" in capsys.readouterr().out

    out = _script("bench_postprocess").main([
        "--workdir", str(workdir), "--ckpt", str(ckpt), "--proposer", str(proposer_dir),
        "--data-root", str(tiny_coco_root), "--images", "1", "--reps", "1", "--scales", "1", "3", "--previous-rev", "HEAD",
        "--classes", "40", *SMALL])
    assert len(out["rows"]) == 6 and all(r[3] > 0 and r[4] > 0 for r in out["rows"])
    assert "spread over 40 classes" in capsys.readouterr().out

    out = _script("bench_point_inputs").main([
        "--workdir", str(workdir), "--ckpt", str(ckpt), "--proposer", str(proposer_dir),
        "--data-root", str(tiny_coco_root), "--images", "1", "--reps", "2", "--previous-rev", "HEAD", "--", *SMALL])
    assert set(out) == {"points previous", "points current", "masks previous", "masks current"}
    assert all(t > 0 for t in out.values()) and "| masks |" in capsys.readouterr().out


def test_bench_hf_proposer(tiny_coco_root: Path, tmp_path: Path):
    """vitp's proposer-alone path and HF's own on the same tiny saved Mask2Former: both timed, their
    panoptic results compared (pixel agreement, PQ, segments kept)."""
    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import Mask2FormerProposer

    torch.manual_seed(0)
    info = read_dataset_info(tiny_coco_root, "val")
    proposer_dir = tmp_path / "hf_model"
    Mask2FormerProposer(preset="tiny", num_classes=info.num_classes, class_names=list(info.class_names),
                        is_thing=list(info.is_thing)).save_pretrained(proposer_dir)
    args = ["--config", str(CONFIG), "--data.init_args.root", str(tiny_coco_root), "--trainer.logger", "false",
            "--model.init_args.proposer.init_args.model", str(proposer_dir), *SMALL]
    ckpt = tmp_path / "vitp.ckpt"
    torch.save({"state_dict": cli(args, run=False).model.state_dict(), "pytorch-lightning_version": L.__version__,
                "epoch": 0, "global_step": 0}, ckpt)
    out = _script("bench_hf_proposer").main([
        "--workdir", str(tmp_path), "--ckpt", str(ckpt), "--proposer", str(proposer_dir),
        "--data-root", str(tiny_coco_root), "--images", "2", "--reps", "1", "--threshold", "0.0", "--", *SMALL])
    assert out["vitp_over_hf_cpu"] > 0 and 0.0 <= out["pixel_class_agreement"] <= 100.0
    assert 0.0 <= out["agreement_on_vitp_segments"] <= 100.0 and 0.0 <= out["images_same_classes"] <= 100.0
    assert out["segments_vitp"] > 0  # threshold 0: the random model's queries are kept


def test_gpu_check_dry_run_on_cpu(tiny_coco_root: Path, tmp_path: Path):
    """The GPU check's ViT part runs on the CPU at a tiny size (bf16 autocast, FLOPs and throughput
    counted); the pipeline part skips a missing run with a message."""
    script = _script("gpu_check")
    out = script.main(["--device", "cpu", "--workdir", str(tmp_path), "--vit-model", "vit_tiny_patch16_224",
                       "--vit-size", "64", "--vit-batch", "2", "--vit-reps", "1", "--points", "5",
                       "--vit-kwargs", "{'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 64}",
                       "--peak-tflops", "1.0"])
    assert out["pipeline"] is None  # no make demo run in tmp_path
    assert out["vit"]["images_per_s"] > 0 and 0 < out["vit"]["mfu"] < 1
    # the analytic count: 2 blocks of 16 patch tokens and 5 queries, width 32
    assert script.vit_flops(2, 32, 16, 5) == 2 * (16 * 24 * 32 ** 2 + 4 * 16 * 16 * 32) + 2 * 5 * (24 * 32 ** 2 + 4 * 17 * 32)


def test_bench_eval_scale_tiny(tmp_path: Path, capsys):
    """Files written in the official layouts, every evaluator run in its own process, vitp's PQ /
    mIoU / mask AP equal to pycocotools', faster-coco-eval's and the NumPy mIoU (panopticapi's row
    runs where it is installed); a second call reuses the files."""
    bench = _script("bench_eval_scale")
    args = ["--dir", str(tmp_path / "eval"), "--images", "6", "--size", "48", "64", "--segments", "5", "12",
            "--workers", "1", "--vitp-processes", "2"]
    results = bench.main(args)
    printed = capsys.readouterr().out
    assert "agreement (tolerance 1e-4): all equal" in printed
    assert {"vitp", "pycocotools", "faster-coco-eval", "miou-reference"} <= set(results)
    vitp = results["vitp"]["metrics"]
    assert 0 < vitp["pq"] < 100 and 0 < vitp["miou"] < 100 and 0 < vitp["ap_map"] < 100
    assert results["pycocotools"]["metrics"]["ap_map"] == vitp["ap_map"]
    assert all(r["wall"] > 0 and r["peak_mib"] > 0 for r in results.values())
    layout = ["annotations/panoptic_val2017.json", "annotations/instances_val2017.json",
              "annotations/panoptic_val2017/000000000001.png", "predictions/panoptic.json",
              "predictions/instances.json", "predictions/semantic/000000000006.png"]
    assert all((tmp_path / "eval" / f).exists() for f in layout)
    stamp = (tmp_path / "eval" / "manifest.json").stat().st_mtime_ns
    bench.main([*args, "--tools", "miou-reference"])
    assert (tmp_path / "eval" / "manifest.json").stat().st_mtime_ns == stamp
