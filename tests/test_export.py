"""PredictionExporter round trips: files read back through the reference evaluators give the same
numbers as the in-memory metrics."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from vitp.data.io import rgb2id
from vitp.export import PredictionExporter
from vitp.metrics import SegmentationMetrics
from vitp.structures import Prediction

_spec = importlib.util.spec_from_file_location("_vitp_test_metrics", pathlib.Path(__file__).with_name("test_metrics.py"))
tm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tm)

IS_THING = [True, False, True, True, False, False]


def _dataset(seed=0, n_img=6):
    rng = np.random.default_rng(seed)
    inst_preds, targets = tm.random_instances(rng, len(IS_THING), IS_THING, n_img=n_img)
    preds = []
    for i, (ip, t) in enumerate(zip(inst_preds, targets)):
        pan, _ = tm.random_case(rng, len(IS_THING), IS_THING, h=48, w=64)
        sem = pan.labels[pan.segments.clamp(min=0)]
        sem[pan.segments < 0] = 255  # an unlabelled pixel in the semantic prediction
        t.file_name = f"img_{i:03d}.jpg"
        preds.append(Prediction(semantic=sem, panoptic=pan, instance=ip))
    return preds, targets


def _read_panoptic(out: pathlib.Path, info):
    """panoptic.json + PNGs -> panopticapi-style (id map, segments_info) per image id."""
    pan = json.loads((out / "panoptic.json").read_text())
    assert {c["id"] for c in pan["categories"]} == set(info.category_ids)
    res = {}
    for ann in pan["annotations"]:
        ids = rgb2id(np.asarray(Image.open(out / "panoptic" / ann["file_name"]).convert("RGB")))
        res[ann["image_id"]] = (ids, ann["segments_info"])
    return pan, res


def test_export_roundtrip(tmp_path):
    info = tm.make_info(IS_THING)
    preds, targets = _dataset()
    sm = SegmentationMetrics(info)
    sm.update(preds, targets)
    metrics = sm.compute()
    ex = PredictionExporter(tmp_path, info)
    for p, t in zip(preds, targets):
        ex.write(p, t)
    written = ex.finalize(metrics)
    assert set(written) == {"panoptic", "instances", "metrics"}
    assert not (tmp_path / ".parts").exists()

    # panoptic: recompute PQ with the panopticapi mirror from the files
    pan, res = _read_panoptic(tmp_path, info)
    assert [im["id"] for im in pan["images"]] == [t.image_id for t in targets]
    assert pan["images"][0]["file_name"] == "img_000.jpg"
    stat = tm.new_pq_stat()
    for p, t in zip(preds, targets):
        ids, segments_info = res[t.image_id]
        gt, gt_info, _, _ = tm.to_ref_format(p.panoptic, t, info)
        # area / bbox fields agree with the PNG
        for s in segments_info:
            ys, xs = np.nonzero(ids == s["id"])
            assert s["area"] == len(ys) and s["iscrowd"] == 0
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        tm.ref_pq_single(gt, gt_info, ids, segments_info, stat)
    ref = tm.ref_results(stat, info)
    tm.assert_close(metrics, ref)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert saved[k] == pytest.approx(metrics[k]) or (saved[k] is None and math.isnan(metrics[k]))

    # instances: pycocotools loadRes + COCOeval on instances.json gives the same AP
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads((tmp_path / "instances.json").read_text())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    expected = tm.pycocotools_ap([p.instance for p in preds], targets, info)  # results from memory
    gt_coco = COCO()
    gt_coco.dataset = _gt_coco(targets, info)
    gt_coco.createIndex()
    ev = COCOeval(gt_coco, gt_coco.loadRes(str(tmp_path / "instances.json")), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert np.allclose(ev.stats, expected, atol=1e-9)
    assert metrics["map"] / 100 == pytest.approx(ev.stats[0], abs=1e-6)

    # semantic: original ids, 255 for unlabelled -> same mIoU
    from vitp.metrics import MeanIoU

    m = MeanIoU(info)
    lut = {c: i for i, c in enumerate(info.category_ids)}
    for p, t in zip(preds, targets):
        png = np.asarray(Image.open(tmp_path / "semantic" / f"{pathlib.Path(t.file_name).stem}.png"))
        assert png.dtype == np.uint8
        assert ((png == 255) == (p.semantic.numpy() == 255)).all()
        back = np.vectorize(lambda v: lut.get(int(v), -1))(png)
        m.update([torch.as_tensor(back)], [t])
    assert float(m.compute()["miou"]) == pytest.approx(metrics["miou"])


def _gt_coco(targets, info):
    from pycocotools import mask as mu

    images, anns = [], []
    for t in targets:
        h, w = t.segments.shape
        images.append({"id": t.image_id, "height": h, "width": w})
        for i, (c, cr) in enumerate(zip(t.labels.tolist(), t.is_crowd.tolist())):
            m = (t.segments == i).numpy()
            if info.is_thing[c] and m.any():
                rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
                anns.append({"id": len(anns) + 1, "image_id": t.image_id, "category_id": info.category_ids[c],
                             "iscrowd": int(cr), "area": float(m.sum()), "segmentation": rle})  # fmt: skip
    cats = [{"id": info.category_ids[c]} for c in range(info.num_classes) if info.is_thing[c]]
    return {"images": images, "annotations": anns, "categories": cats}


def test_export_ranks_merge_and_dedup(tmp_path):
    """Two ranks (simulated, no process group) write their own parts; rank 0 merges; an image
    written by both ranks (DistributedSampler padding) appears once."""
    info = tm.make_info(IS_THING)
    preds, targets = _dataset(seed=1, n_img=5)
    r0 = PredictionExporter(tmp_path, info, rank=0, world_size=2)
    r1 = PredictionExporter(tmp_path, info, rank=1, world_size=2)
    for i, (p, t) in enumerate(zip(preds, targets)):
        (r0 if i % 2 == 0 else r1).write(p, t)
    r1.write(preds[0], targets[0])  # padding duplicate
    assert r1.finalize() is None
    written = r0.finalize({"pq": float("nan")})
    pan, res = _read_panoptic(tmp_path, info)
    assert sorted(im["id"] for im in pan["images"]) == sorted(t.image_id for t in targets)
    assert len(pan["annotations"]) == len(targets) and set(res) == {t.image_id for t in targets}
    results = json.loads((tmp_path / "instances.json").read_text())
    n_expected = sum(int(p.instance.labels.numel()) for p in preds)
    assert len(results) == n_expected
    assert json.loads(written["metrics"].read_text()) == {"pq": None}


def test_export_uint16_semantic(tmp_path):
    from vitp.structures import DatasetInfo

    info = DatasetInfo(("a", "b"), (7, 300), (True, False))
    seg = torch.tensor([[0, 0, 1], [1, -1, 1]])
    t = tm.make_target(seg, [0, 1], file_name="x.png")
    ex = PredictionExporter(tmp_path, info)
    ex.write(Prediction(semantic=torch.tensor([[0, 1, 1], [1, 5, 0]])), t)
    ex.finalize(None)
    png = np.asarray(Image.open(tmp_path / "semantic" / "x.png"))
    assert png.tolist() == [[7, 300, 300], [300, 65535, 7]]
    assert not (tmp_path / "panoptic.json").exists() and not (tmp_path / "instances.json").exists()


def test_id2rgb_bytes_equal_the_arithmetic():
    """The byte view gives panopticapi's ``id % 256, id // 256 % 256, id // 65536 % 256`` for any
    integer map (negative and beyond 2**24 included, non-contiguous views too)."""
    from vitp.data.io import id2rgb, rgb2id

    ids = np.random.default_rng(0).integers(-300, 1 << 30, (37, 53))
    expected = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)
    for x in (ids, ids.astype(np.int32), ids[:, ::3], ids.T):
        ref = np.stack([x % 256, x // 256 % 256, x // 65536 % 256], -1).astype(np.uint8)
        assert np.array_equal(id2rgb(x), ref)
    small = np.abs(ids) % (1 << 24)
    assert np.array_equal(rgb2id(id2rgb(small)), small) and np.array_equal(id2rgb(ids), expected)


def test_nearest_resized_rle_equals_encoding_the_resized_mask():
    """An instance mask held at post-processing size is encoded at the image size from its own runs;
    the RLE equals pycocotools' encoding of the full-size nearest-neighbour mask (up- and
    down-scaling, empty and full masks, single rows and columns, blobs inside or on the border)."""
    from pycocotools import mask as mu

    from vitp.rle import nearest_resized_rle
    from vitp.structures import InstancePrediction

    rng = np.random.default_rng(0)
    for trial in range(600):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        size = tuple(int(v) for v in rng.integers(1, 90, 2))
        mask = rng.random((h, w)) < [0.5, 0.05, 0.95][trial % 3]
        if trial % 7 == 0:
            mask[:] = trial % 2 == 0
        elif trial % 5 == 0:  # a blob in a box that may or may not touch the borders
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            box = mask[y0:y0 + int(rng.integers(1, h + 1)), x0:x0 + int(rng.integers(1, w + 1))].copy()
            mask[:] = False
            mask[y0:y0 + box.shape[0], x0:x0 + box.shape[1]] = box
        inst = InstancePrediction(torch.from_numpy(mask)[None], torch.zeros(1, dtype=torch.long), torch.ones(1),
                                  image_size=size)
        expected = mu.encode(np.asfortranarray(inst.mask(0).numpy().astype(np.uint8)))
        rle = nearest_resized_rle(mask, size)
        assert rle["counts"] == expected["counts"] and list(rle["size"]) == list(size), (trial, h, w, size)
