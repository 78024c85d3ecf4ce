"""``scripts/bench_native_vs_mask2former.py`` end to end on tiny random models (a tiny Mask2Former and
a tiny native proposer saved like stage 1, a ViT-P checkpoint of the stage-2 config) and the tiny
generated dataset: every number is produced and in range, the recall counts every segment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from test_native_scripts import load_script

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"


def _overrides(root: Path) -> list[str]:
    return ["--data.init_args.root", str(root), "--data.init_args.image_size", "64",
            "--data.init_args.num_workers", "0", "--data.init_args.eval_batch_size", "3",
            "--model.init_args.classifier.init_args.image_size", "64"]


def test_bench_tiny(tiny_coco_root: Path, tmp_path: Path, capsys, keep_threads):
    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import Mask2FormerProposer, NativeProposer

    torch.manual_seed(0)
    info = read_dataset_info(tiny_coco_root, "val")
    labels = dict(num_classes=info.num_classes, class_names=list(info.class_names), is_thing=list(info.is_thing))
    m2f, native = tmp_path / "m2f", tmp_path / "native"
    Mask2FormerProposer(preset="tiny", **labels).save_pretrained(m2f)
    NativeProposer(preset="tiny", **labels).save_pretrained(native)
    proposer = json.dumps({"class_path": "vitp.proposers.Mask2FormerProposer", "init_args": {"model": str(m2f)}})
    built = cli(["--config", str(CONFIG), f"--model.init_args.proposer={proposer}", *_overrides(tiny_coco_root),
                 "--trainer.logger", "false"], run=False)
    ckpt = tmp_path / "vitp.ckpt"
    torch.save({"state_dict": built.model.state_dict()}, ckpt)
    log = tmp_path / "train.log"
    log.write_text("...\n\tUser time (seconds): 12.50\n\tSystem time (seconds): 1.50\n"
                   "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02.5\n")

    bench = load_script("bench_native_vs_mask2former")
    out = bench.main(["--mask2former", str(m2f), "--native", str(native), "--vitp-checkpoint", str(ckpt),
                      "--timing-reps", "2", "--out", str(tmp_path / "r.json"), "--train-log", f"native={log}",
                      *[f"--override={a}" for a in _overrides(tiny_coco_root)]])
    printed = capsys.readouterr().out
    assert "| mask recall @ IoU > 0.5, all GT segments (%) |" in printed and "forward-time ratio" in printed
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["threads"] == 1
    r = out["results"]
    assert r["mask2former"]["proposer_equals_checkpoint"] is True  # the checkpoint's own proposer
    assert r["native"]["proposer_equals_checkpoint"] is None  # another architecture: only its classifier
    for name in ("mask2former", "native"):
        res = r[name]
        # every non-crowd ground-truth segment of the 6 val images is counted once
        assert res["gt_segments_all"] == res["gt_segments_thing"] + res["gt_segments_stuff"] > 0
        for key in ("recall_all", "pq", "pq_oracle", "miou"):
            assert 0.0 <= res[key] <= 100.0, (name, key, res[key])
        assert res["proposer_params"] > 0 and res["forward"]["reps"] == 2 and res["forward_ms"] > 0
    assert r["mask2former"]["proposals_per_image"] == 100 or r["mask2former"]["proposals_per_image"] > 0
    assert r["native"]["train_cpu_s"] == pytest.approx(14.0) and r["native"]["train_wall_s"] == pytest.approx(62.5)
    assert out["summary"]["forward_time_ratio_native_over_mask2former"] > 0


def test_recall_counts_iou_above_half():
    """A proposal equal to a segment matches it; one covering it and as much again (IoU 0.5) does not."""
    bench = load_script("bench_native_vs_mask2former")
    from vitp.structures import Target

    seg = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [-1, -1, 2, 2]])
    target = Target(masks=torch.zeros(3, 4, 4, dtype=torch.bool), labels=torch.tensor([0, 1, 2]),
                    is_crowd=torch.tensor([False, False, True]), segments=seg, image_id=0, file_name="x",
                    orig_size=(4, 4), valid_size=(4, 4))
    recall = bench.ProposalRecall(torch.nn.Identity(), torch.tensor([True, False, False]))
    exact0 = (seg == 0).flatten()
    half1 = ((seg == 1) | (seg == 0)).flatten()  # IoU with segment 1 = 4 / 8 = 0.5: not > 0.5
    recall.update(torch.stack([exact0, half1]), target)
    res = recall.result()
    assert res["gt_segments_all"] == 2  # the crowd segment is not counted
    assert res["recall_all"] == 50.0 and res["recall_thing"] == 100.0 and res["recall_stuff"] == 0.0
    assert res["proposals_per_image"] == 2 and res["nonempty_proposals_per_image"] == 2
