"""`vitp test` with a noisy oracle on the generated dataset; the exported files, scored by the
reference evaluators (a panopticapi-style pq_compute on panoptic.json + PNGs, pycocotools COCOeval on
instances.json), give the numbers in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from test_cli import vitp_in_process
from conftest import PROJECT_ROOT
from test_metrics import new_pq_stat, ref_pq_single, ref_results
from vitp.data import read_dataset_info
from vitp.data.io import rgb2id


def test_exported_predictions_score_the_same_with_reference_evaluators(tiny_coco_root: Path, tmp_path: Path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "export"
    vitp_in_process(
        "test", "--config", str(PROJECT_ROOT / "configs/coco/panoptic/oracle.yaml"),
        "--data.init_args.root", str(tiny_coco_root),
        "--data.init_args.num_workers", "0",
        "--model.init_args.proposer.init_args.label_noise", "0.3",
        "--model.init_args.proposer.init_args.drop", "0.2",
        "--model.init_args.proposer.init_args.jitter", "2",
        "--model.init_args.output.export_dir", str(export),
    )
    metrics = json.loads((export / "metrics.json").read_text())
    assert 0 < metrics["pq"] < 90  # the noise really degrades the predictions

    ann_dir = tiny_coco_root / "annotations"
    gt_json = json.loads((ann_dir / "panoptic_val2017.json").read_text())
    pred_json = json.loads((export / "panoptic.json").read_text())
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    assert set(preds) == {a["image_id"] for a in gt_json["annotations"]}
    stat = new_pq_stat()
    for gt in gt_json["annotations"]:
        pred = preds[gt["image_id"]]
        gt_ids = rgb2id(np.asarray(Image.open(ann_dir / "panoptic_val2017" / gt["file_name"]).convert("RGB")))
        pred_ids = rgb2id(np.asarray(Image.open(export / "panoptic" / pred["file_name"]).convert("RGB")))
        ref_pq_single(gt_ids, gt["segments_info"], pred_ids, pred["segments_info"], stat)
    reference = ref_results(stat, read_dataset_info(tiny_coco_root, "val"))
    for key in ("pq", "sq", "rq", "pq_th", "pq_st"):
        assert metrics[key] == pytest.approx(reference[key], abs=0.01), key

    coco_gt = COCO(str(ann_dir / "instances_val2017.json"))
    coco_dt = coco_gt.loadRes(str(export / "instances.json"))
    evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["map"] == pytest.approx(100 * evaluator.stats[0], abs=0.01)
    assert 0 < metrics["map"] < 95
