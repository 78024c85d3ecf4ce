"""A checkpoint written before the inference refactor still loads and gives the same metrics.

tests/data/checkpoint_v0 was made with vitp at commit 24648e6 (see its README)::

    env PYTHONPATH=<checkout of 24648e6>/src vitp fit  $ARGS --trainer.max_epochs 2 \
        --trainer.check_val_every_n_epoch 2 --trainer.limit_val_batches 1 --model.init_args.optimization.warmup_steps 1
    env PYTHONPATH=<checkout of 24648e6>/src vitp test $ARGS --ckpt_path oracle_tiny.ckpt \
        --model.init_args.output.export_dir export    # -> metrics_v0.json

    ARGS = --config configs/synthetic/vitp/tiny_oracle_masks.yaml --data.init_args.root <tiny_coco_root>
           --data.init_args.image_size 112 --data.init_args.num_workers 0 --data.init_args.batch_size 4
           --data.init_args.eval_batch_size 4 --trainer.enable_progress_bar false --trainer.logger false
           --config tests/data/checkpoint_v0/tiny.yaml

On the machine that made it the metrics agree bit for bit; the test allows 1e-6 (another CPU may
round a float differently).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process

DATA = PROJECT_ROOT / "tests" / "data" / "checkpoint_v0"


def test_checkpoint_from_before_the_refactor_gives_the_same_metrics(tiny_coco_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "export"
    vitp_in_process(
        "test", "--config", str(PROJECT_ROOT / "configs/synthetic/vitp/tiny_oracle_masks.yaml"),
        "--data.init_args.root", str(tiny_coco_root), "--data.init_args.image_size", "112",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
        "--data.init_args.eval_batch_size", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--config", str(DATA / "tiny.yaml"),
        "--ckpt_path", str(DATA / "oracle_tiny.ckpt"), "--model.init_args.output.export_dir", str(export))
    expected = json.loads((DATA / "metrics_v0.json").read_text())
    got = json.loads((export / "metrics.json").read_text())
    assert set(expected) <= set(got)
    for key, value in expected.items():
        if value is None:
            assert got[key] is None or math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-6), (key, got[key], value)
