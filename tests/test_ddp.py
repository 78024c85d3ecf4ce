"""Distributed evaluation: every image evaluated and exported exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from test_cli import run_vitp, vitp_in_process
from vitp.data.samplers import UnpaddedDistributedSampler


@pytest.mark.parametrize("n,world", [(7, 2), (6, 3), (2, 4)])
def test_unpadded_sampler_covers_each_index_once(n: int, world: int):
    seen = [i for r in range(world) for i in UnpaddedDistributedSampler(range(n), world, r)]
    assert sorted(seen) == list(range(n))
    assert sum(len(UnpaddedDistributedSampler(range(n), world, r)) for r in range(world)) == n


def test_ddp_test_equals_single_process(tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    """5 val images on 2 CPU processes (a padding sampler would count one image twice): the noisy
    oracle's metrics and exported predictions equal those of a single-process run (that one runs
    in-process; the DDP run launches its processes from a `vitp` subprocess)."""
    monkeypatch.chdir(tmp_path)
    common = [
        "test", "--config", str(PROJECT_ROOT / "configs/coco/panoptic/oracle.yaml"), "--data.init_args.root", str(tiny_coco_root),
        "--data.init_args.num_workers", "0", "--data.init_args.max_eval_samples", "5",
        "--data.init_args.eval_batch_size", "1", "--trainer.accelerator", "cpu",
        "--model.init_args.proposer.init_args.label_noise", "0.3",
        "--model.init_args.proposer.init_args.drop", "0.2",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    vitp_in_process(*common, "--trainer.devices", "1", "--model.init_args.export_dir", str(single))
    run_vitp(*common, "--trainer.devices", "2", "--trainer.strategy", "ddp",
             "--model.init_args.export_dir", str(ddp), cwd=tmp_path)
    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((ddp / "metrics.json").read_text())
    assert m1["pq"] < 100.0  # the noise makes double counting visible
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-9), key
    panoptic = json.loads((ddp / "panoptic.json").read_text())
    assert len(panoptic["annotations"]) == 5
    assert len({a["image_id"] for a in panoptic["annotations"]}) == 5
