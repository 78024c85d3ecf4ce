"""Metrics under a real 2-process gloo group: gathered results equal a single-process run."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitp.metrics import SegmentationMetrics
from vitp.structures import Prediction

_spec = importlib.util.spec_from_file_location("_vitp_test_metrics", pathlib.Path(__file__).with_name("test_metrics.py"))
tm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tm)

IS_THING = [True, False, True, True, False]


def _data(rank: int, n_img: int):
    rng = np.random.default_rng(100 + rank)
    preds, targets = tm.random_instances(rng, len(IS_THING), IS_THING, n_img=n_img)
    out = []
    for p, t in zip(preds, targets):
        pan, _ = tm.random_case(rng, len(IS_THING), IS_THING, h=48, w=64)
        out.append(Prediction(semantic=pan.labels[pan.segments.clamp(min=0)], panoptic=pan, instance=p))
    # panoptic / semantic predictions must be the same size as the target
    return out, targets


def _worker(rank: int, world: int, init: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        info = tm.make_info(IS_THING)
        sm = SegmentationMetrics(info)
        preds, targets = _data(rank, n_img=2 + rank)  # uneven image counts per rank
        sm.update(preds, targets)
        res = sm.compute()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    world = 2
    init = f"file://{tmp_path}/init"
    # spawn (fork deadlocks once the parent has used torch's thread pools); ~20 s on 2 CPU cores
    mp.spawn(_worker, args=(world, init, str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    info = tm.make_info(IS_THING)
    single = SegmentationMetrics(info)
    for r in range(world):
        single.update(*_data(r, n_img=2 + r))
    expected = single.compute()
    for res in results:
        assert res.keys() == expected.keys()
        for k, v in expected.items():
            assert res[k] == pytest.approx(v, abs=1e-9, nan_ok=True), k
