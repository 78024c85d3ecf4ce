"""PQ / mIoU / mask AP against hand-computed numbers and independent reference implementations."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from vitp.metrics import MaskAP, MeanIoU, PanopticQuality, SegmentationMetrics
from vitp.structures import DatasetInfo, InstancePrediction, PanopticPrediction, Prediction, Target

# --------------------------------------------------------------------------------------------------
# helpers


def make_info(is_thing: list[bool]) -> DatasetInfo:
    k = len(is_thing)
    return DatasetInfo(
        class_names=tuple(f"c{i}" for i in range(k)),
        category_ids=tuple(10 + 3 * i for i in range(k)),  # original ids differ from contiguous ones
        is_thing=tuple(is_thing),
    )


def make_target(segments, labels, crowd=None, image_id=0, file_name="img.jpg") -> Target:
    segments = torch.as_tensor(np.asarray(segments), dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n = labels.numel()
    crowd = torch.zeros(n, dtype=torch.bool) if crowd is None else torch.as_tensor(crowd, dtype=torch.bool)
    h, w = segments.shape
    masks = torch.stack([segments == i for i in range(n)]) if n else torch.zeros(0, h, w, dtype=torch.bool)
    return Target(masks, labels, crowd, segments, image_id, file_name, (h, w), (h, w))


def make_pan(segments, labels, scores=None) -> PanopticPrediction:
    segments = torch.as_tensor(np.asarray(segments), dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    scores = torch.ones(labels.numel()) if scores is None else torch.as_tensor(scores, dtype=torch.float)
    return PanopticPrediction(segments, labels, scores)


# --------------------------------------------------------------------------------------------------
# independent reference: a line-by-line mirror of panopticapi's pq_compute_single_core + pq_average
# on id maps (0 = void) and dict-based segment lists.

VOID = 0
OFFSET = 256 * 256 * 256


def ref_pq_single(pan_gt, gt_segments_info, pan_pred, pred_segments_info, pq_stat):
    gt_segms = {el["id"]: dict(el) for el in gt_segments_info}
    pred_segms = {el["id"]: dict(el) for el in pred_segments_info}
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    pred_labels_set = set(el["id"] for el in pred_segments_info)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"segment {label} in PNG and not in JSON")
        pred_segms[label]["area"] = label_cnt
        pred_labels_set.remove(label)
    if pred_labels_set:
        raise KeyError(f"segments {pred_labels_set} in JSON and not in PNG")

    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(int(gt_id), int(pred_id))] = int(intersection)

    gt_matched, pred_matched = set(), set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (
            pred_segms[pred_label]["area"]
            + gt_segms[gt_label]["area"]
            - intersection
            - gt_pred_map.get((VOID, pred_label), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            pq_stat[gt_segms[gt_label]["category_id"]]["tp"] += 1
            pq_stat[gt_segms[gt_label]["category_id"]]["iou"] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels_dict[gt_info["category_id"]] = gt_label
            continue
        pq_stat[gt_info["category_id"]]["fn"] += 1

    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        if pred_info["category_id"] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
        if intersection / pred_info["area"] > 0.5:
            continue
        pq_stat[pred_info["category_id"]]["fp"] += 1
    return pq_stat


def ref_pq_average(pq_stat, categories: dict[int, bool], isthing: bool | None):
    pq, sq, rq, n = 0.0, 0.0, 0.0, 0
    for label, label_isthing in categories.items():
        if isthing is not None and isthing != label_isthing:
            continue
        s = pq_stat[label]
        iou, tp, fp, fn = s["iou"], s["tp"], s["fp"], s["fn"]
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp != 0 else 0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    if n == 0:
        return {"pq": math.nan, "sq": math.nan, "rq": math.nan}
    return {"pq": 100 * pq / n, "sq": 100 * sq / n, "rq": 100 * rq / n}


def ref_results(pq_stat, info: DatasetInfo) -> dict[str, float]:
    cats = dict(zip(info.category_ids, info.is_thing))
    out = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        for k, v in ref_pq_average(pq_stat, cats, isthing).items():
            out[k + suffix] = v
    return out


def new_pq_stat():
    return defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})


def to_ref_format(pred: PanopticPrediction, target: Target, info: DatasetInfo):
    """Target / prediction -> panopticapi-style id maps and segment lists (original category ids)."""
    gt = target.segments.numpy() + 1
    ids, counts = np.unique(gt, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist()))
    gt_info = [
        {"id": i + 1, "category_id": info.category_ids[int(c)], "iscrowd": int(cr), "area": area[i + 1]}
        for i, (c, cr) in enumerate(zip(target.labels.tolist(), target.is_crowd.tolist()))
        if i + 1 in area
    ]
    pr = pred.segments.numpy() + 1
    present = set(np.unique(pr).tolist())
    pred_info = [
        {"id": i + 1, "category_id": info.category_ids[int(c)]}
        for i, c in enumerate(pred.labels.tolist())
        if i + 1 in present
    ]
    return gt, gt_info, pr, pred_info


def reference_pq(preds, targets, info: DatasetInfo) -> dict[str, float]:
    stat = new_pq_stat()
    for p, t in zip(preds, targets):
        ref_pq_single(*to_ref_format(p, t, info), stat)
    return ref_results(stat, info)


# --------------------------------------------------------------------------------------------------
# random, realistic-ish cases


def random_case(rng: np.random.Generator, k: int, is_thing, h=40, w=56, crowd=True, gt_void=True, pred_void=True):
    n = int(rng.integers(3, 14))
    seg = np.full((h, w), -1 if gt_void else 0, dtype=np.int64)
    if not gt_void:
        n = max(n, 1)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        y1, x1 = y0 + rng.integers(4, h // 2 + 4), x0 + rng.integers(4, w // 2 + 4)
        seg[y0:y1, x0:x1] = i
    if gt_void:
        for _ in range(int(rng.integers(0, 3))):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            seg[y0 : y0 + rng.integers(2, 10), x0 : x0 + rng.integers(2, 10)] = -1
    labels = rng.integers(0, k, n)
    is_crowd = np.zeros(n, bool)
    if crowd:
        used = set()
        for i in range(n):  # at most one crowd segment per class, as in COCO panoptic
            if is_thing[labels[i]] and labels[i] not in used and rng.random() < 0.25:
                is_crowd[i] = True
                used.add(labels[i])
    target = make_target(seg, labels, is_crowd)

    # prediction: shifted ground truth, some segments merged / relabelled, extra blobs, void holes
    pmap = np.arange(n)
    for i in range(n):
        if rng.random() < 0.15:
            pmap[i] = rng.integers(0, n)
    pl = labels.copy()
    flip = rng.random(n) < 0.1
    pl[flip] = rng.integers(0, k, int(flip.sum()))
    pseg = np.where(seg >= 0, pmap[np.clip(seg, 0, None)], int(rng.integers(0, n)))
    pseg = np.roll(pseg, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    extra = int(rng.integers(0, 4))
    pl = np.concatenate([pl, rng.integers(0, k, extra)])
    for j in range(extra):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        pseg[y0 : y0 + rng.integers(3, 15), x0 : x0 + rng.integers(3, 15)] = n + j
    if pred_void:
        for _ in range(int(rng.integers(0, 3))):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            pseg[y0 : y0 + rng.integers(2, 12), x0 : x0 + rng.integers(2, 12)] = -1
    noise = rng.random((h, w)) < 0.03
    pseg[noise] = rng.integers(-1 if pred_void else 0, n + extra, int(noise.sum()))
    pred = make_pan(pseg, pl, rng.random(n + extra))
    return pred, target


def assert_close(result: dict, expected: dict, tol=1e-9):
    for key, v in expected.items():
        got = float(result[key])
        if math.isnan(v):
            assert math.isnan(got), (key, got, v)
        else:
            assert got == pytest.approx(v, abs=tol), (key, got, v)


# --------------------------------------------------------------------------------------------------
# PQ


def test_pq_hand_computed():
    info = make_info([True, False])  # class 0 thing, class 1 stuff
    gt = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]
    pr = [[0, 0, 0, 1], [0, 0, 0, 1], [2, 2, 2, 2], [2, 2, 2, -1]]
    # pred 0 (6 px) vs gt 0 (4 px): inter 4, union 6 -> IoU 2/3, TP of class 0
    # pred 1 (2 px) vs gt 1 (4 px): inter 2, union 4 -> IoU 0.5, NOT > 0.5 -> FP + FN of class 0
    # pred 2 (7 px) vs gt 2 (8 px): inter 7, union 8 -> IoU 7/8, TP of class 1
    # class 0: PQ = (2/3) / (1 + .5 + .5) = 1/3, SQ = 2/3, RQ = 1/2
    # class 1: PQ = SQ = 7/8, RQ = 1
    m = PanopticQuality(info)
    m.update([make_pan(pr, [0, 0, 1])], [make_target(gt, [0, 0, 1])])
    r = m.compute()
    expected = {
        "pq": 100 * (1 / 3 + 7 / 8) / 2, "sq": 100 * (2 / 3 + 7 / 8) / 2, "rq": 100 * (1 / 2 + 1) / 2,
        "pq_th": 100 / 3, "sq_th": 200 / 3, "rq_th": 50.0,
        "pq_st": 87.5, "sq_st": 87.5, "rq_st": 100.0,
    }  # fmt: skip
    assert_close(r, expected)
    per = m.compute_per_class()
    assert per["tp"].tolist() == [1, 1] and per["fp"].tolist() == [1, 0] and per["fn"].tolist() == [1, 0]
    assert set(r) == set(expected)


def test_pq_void_excluded_from_union_and_fp():
    info = make_info([True, True])
    # gt: segment 0 (class 0) = left 2 columns (8 px); right 2 columns void
    gt = [[0, 0, -1, -1]] * 4
    # pred 0 (class 0) covers the whole image: inter 8, area 16, void overlap 8
    # union = 16 + 8 - 8 - 8 = 8 -> IoU 1.0
    m = PanopticQuality(info)
    m.update([make_pan([[0] * 4] * 4, [0])], [make_target(gt, [0])])
    assert_close(m.compute(), {"pq": 100.0, "sq": 100.0, "rq": 100.0})

    # a prediction lying mostly on void (3 of 4 px) is not a FP; only on half of it -> FP
    gt = [[0, 0, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1], [0, 0, 0, 0]]  # 10 px class 0
    pr_ok = [[0, 0, -1, -1], [0, 0, -1, -1], [0, 0, 1, 1], [0, 0, 1, 1]]  # pred1: 2 void + 2 gt px
    m = PanopticQuality(info)
    m.update([make_pan(pr_ok, [0, 1])], [make_target(gt, [0])])
    # pred 1 (class 1): void overlap 2 of 4 = 0.5, not > 0.5 -> FP of class 1
    # pred 0: inter 8, union 8 + 10 - 8 - 0 = 10 -> IoU 0.8 TP
    per = m.compute_per_class()
    assert per["fp"].tolist() == [0, 1] and per["tp"].tolist() == [1, 0]
    pr_void = [[0, 0, 1, 1], [0, 0, 1, -1], [0, 0, -1, -1], [0, 0, 0, 1]]  # pred1: 3 void + 1 gt
    m = PanopticQuality(info)
    m.update([make_pan(pr_void, [0, 1])], [make_target(gt, [0])])
    per = m.compute_per_class()
    assert per["fp"].tolist() == [0, 0]  # 3/4 of pred 1 on void: ignored
    # pred 0: 9 px, inter 9, gt 10 -> IoU 0.9; class 1 has no TP/FP/FN -> excluded
    assert_close(m.compute(), {"pq": 90.0, "pq_th": 90.0, "pq_st": math.nan})


def test_pq_crowd():
    info = make_info([True, True, False])
    # gt: seg 0 = class 0 non-crowd (left half), seg 1 = class 0 crowd (right half, 8 px)
    gt = [[0, 0, 1, 1]] * 4
    # pred 0 class 0 on the crowd region -> unmatched (crowd not matched) but on crowd of its class
    m = PanopticQuality(info)
    m.update([make_pan([[-1, -1, 0, 0]] * 4, [0])], [make_target(gt, [0, 0], [False, True])])
    per = m.compute_per_class()
    # gt 0 is a FN, the crowd gt is not; pred 0 is not a FP
    assert per["fn"].tolist() == [1, 0, 0] and per["fp"].tolist() == [0, 0, 0]
    assert per["tp"].tolist() == [0, 0, 0]
    # same prediction but of class 1: the crowd belongs to another class -> FP of class 1
    m = PanopticQuality(info)
    m.update([make_pan([[-1, -1, 0, 0]] * 4, [1])], [make_target(gt, [0, 0], [False, True])])
    per = m.compute_per_class()
    assert per["fn"].tolist() == [1, 0, 0] and per["fp"].tolist() == [0, 1, 0]
    # crowd + void together exceed half the segment: 3 px crowd + 3 px void of a 10 px segment = 0.6
    gt2 = [[0, 0, 1, 1, 1, -1, -1, -1, 2, 2]]
    m = PanopticQuality(info)
    m.update([make_pan([[-1, -1, 0, 0, 0, 0, 0, 0, 0, 0]], [0])], [make_target(gt2, [0, 0, 2], [0, 1, 0])])
    per = m.compute_per_class()
    # pred 0: 8 px, 3 crowd + 3 void = 6 > 4 -> not FP; stuff gt 2 -> FN of class 2
    assert per["fp"].tolist() == [0, 0, 0] and per["fn"].tolist() == [1, 0, 1]
    # the crowd segment is never matched, even by a perfect prediction
    m = PanopticQuality(info)
    m.update([make_pan([[0, 0, 1, 1]] * 4, [0, 0])], [make_target(gt, [0, 0], [False, True])])
    per = m.compute_per_class()
    assert per["tp"].tolist() == [1, 0, 0] and per["fp"].tolist() == [0, 0, 0] and per["fn"].sum() == 0


def test_pq_empty_and_unused_segments():
    info = make_info([True, False])
    # a predicted segment without pixels and a gt segment without pixels are ignored
    gt = [[0, 0], [0, 0]]
    m = PanopticQuality(info)
    m.update([make_pan([[1, 1], [1, 1]], [1, 0])], [make_target(gt, [0, 1])])
    per = m.compute_per_class()
    assert per["tp"].tolist() == [1, 0] and per["fp"].sum() == 0 and per["fn"].sum() == 0
    r = m.compute()
    assert float(r["pq"]) == 100.0 and math.isnan(float(r["pq_st"]))


@pytest.mark.parametrize("seed", range(4))
def test_pq_matches_reference(seed):
    rng = np.random.default_rng(seed)
    is_thing = [True, True, True, False, False, True, False]
    info = make_info(is_thing)
    cases = [random_case(rng, len(is_thing), is_thing) for _ in range(12)]
    preds, targets = [c[0] for c in cases], [c[1] for c in cases]
    m = PanopticQuality(info)
    m.update(preds[:5], targets[:5])
    m.update(preds[5:], targets[5:])
    assert_close(m.compute(), reference_pq(preds, targets, info))


def test_pq_matches_torchmetrics_without_crowd():
    from torchmetrics.detection import PanopticQuality as TMPanopticQuality

    rng = np.random.default_rng(7)
    is_thing = [True, True, False, False, True]
    info = make_info(is_thing)
    k = len(is_thing)
    things = [info.category_ids[i] for i in range(k) if is_thing[i]]
    stuffs = [info.category_ids[i] for i in range(k) if not is_thing[i]]
    tm = TMPanopticQuality(things=things, stuffs=stuffs, return_sq_and_rq=True)
    m = PanopticQuality(info)
    cat_ids = torch.as_tensor(info.category_ids)

    def encode(x):
        # torchmetrics input: (category id, instance id) per pixel; unknown category = void
        seg, labels = x.segments, x.labels
        cat = cat_ids[labels][seg.clamp(min=0)]
        cat = torch.where(seg < 0, torch.full_like(cat, -1), cat)
        return torch.stack([cat, seg + 1], -1)[None]

    # torchmetrics merges all pixels of a stuff class into one segment and treats predicted void
    # like gt void (it drops FNs mostly covered by predicted void): compare on cases where both
    # conventions agree -- one segment per stuff class, no crowd, void only in the ground truth.
    for _ in range(10):
        pred, target = random_case(rng, k, is_thing, crowd=False, gt_void=True, pred_void=False)
        pred, target = merge_stuff(pred, info), merge_stuff(target, info)
        m.update([pred], [target])
        tm.update(encode(pred), encode(target))
    r = m.compute()
    theirs = tm.compute()
    # torchmetrics accumulates IoU in float32
    assert float(r["pq"]) == pytest.approx(float(theirs[0]) * 100, abs=1e-4)
    assert float(r["sq"]) == pytest.approx(float(theirs[1]) * 100, abs=1e-4)
    assert float(r["rq"]) == pytest.approx(float(theirs[2]) * 100, abs=1e-4)


def merge_stuff(x, info: DatasetInfo):
    """Make one segment per stuff class (the torchmetrics convention for stuff)."""
    seg, labels = x.segments.clone(), x.labels.clone()
    k = info.num_classes
    new_labels = list(labels.tolist())
    out = seg.clone()
    for c in range(k):
        if info.is_thing[c]:
            continue
        idx = [i for i, l in enumerate(labels.tolist()) if l == c]
        if len(idx) > 1:
            for i in idx[1:]:
                out[seg == i] = idx[0]
    if isinstance(x, Target):
        return make_target(out, new_labels, x.is_crowd)
    return make_pan(out, new_labels, x.scores)


def test_pq_state_is_summable():
    """DDP reduction is a sum of the per-class states: two halves summed == one pass."""
    rng = np.random.default_rng(3)
    is_thing = [True, False, True]
    info = make_info(is_thing)
    cases = [random_case(rng, 3, is_thing) for _ in range(6)]
    a, b, full = PanopticQuality(info), PanopticQuality(info), PanopticQuality(info)
    for i, (p, t) in enumerate(cases):
        (a if i % 2 else b).update([p], [t])
        full.update([p], [t])
    for name in ("iou_sum", "tp", "fp", "fn"):
        assert torch.allclose(getattr(a, name) + getattr(b, name), getattr(full, name))
    a.merge_state(b)
    assert_close(a.compute(), {k: float(v) for k, v in full.compute().items()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pq_on_gpu():
    rng = np.random.default_rng(5)
    is_thing = [True, False, True, False]
    info = make_info(is_thing)
    cases = [random_case(rng, 4, is_thing) for _ in range(5)]
    m = PanopticQuality(info).cuda()
    for p, t in cases:
        p = PanopticPrediction(p.segments.cuda(), p.labels.cuda(), p.scores.cuda())
        m.update([p], [t.to("cuda")])
    assert_close(m.compute(), reference_pq([c[0] for c in cases], [c[1] for c in cases], info))


# --------------------------------------------------------------------------------------------------
# mIoU


def test_miou_hand_computed():
    info = make_info([True, False, False])
    # gt segments: 0 -> class 0 (crowd), 1 -> class 1, -1 void
    gt = [[0, 0, 1, 1], [0, 0, 1, 1], [-1, -1, 1, 1]]
    pr = [[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 2, 2]]
    # valid pixels: 10 (2 void ignored). crowd pixels keep class 0.
    # class 0: gt 4 px, pred on valid 3 px (all correct) -> tp 3, union 4 -> 75 %
    # class 1: gt 6 px, pred on valid 4 px (1 wrong on gt0) -> tp 3... list:
    #   gt1 pixels (r0c2,r0c3,r1c2,r1c3,r2c2,r2c3) preds: 1,1,1,2,2,2 -> tp 3; pred 1 also at r0c1 (gt 0)
    #   union = 6 + 4 - 3 = 7 -> 3/7
    # class 2: gt 0 px, pred 3 px on valid -> union 3, tp 0 -> 0 %
    m = MeanIoU(info)
    m.update([torch.tensor(pr)], [make_target(gt, [0, 1], [True, False])])
    per = m.compute_per_class()["iou"]
    assert per.tolist() == pytest.approx([75.0, 300 / 7, 0.0])
    r = m.compute()
    assert float(r["miou"]) == pytest.approx((75 + 300 / 7 + 0) / 3)
    assert float(r["acc"]) == pytest.approx(60.0)  # 6 of 10 valid pixels


def test_miou_absent_class_and_out_of_range():
    info = make_info([True, False, False])
    gt = [[0, 0], [0, 0]]
    m = MeanIoU(info)
    m.update([torch.tensor([[0, 0], [0, 255]])], [make_target(gt, [1])])
    per = m.compute_per_class()["iou"]
    # class 1: tp 0 (pred 0 / 255); class 0: pred 3 px, no gt -> 0; class 2: nothing -> NaN
    assert per[0] == 0 and per[1] == 0 and math.isnan(per[2])
    assert float(m.compute()["miou"]) == 0.0


def test_miou_matches_direct_computation():
    rng = np.random.default_rng(11)
    k = 6
    info = make_info([bool(i % 2) for i in range(k)])
    m = MeanIoU(info)
    inter, union = np.zeros(k), np.zeros(k)
    for _ in range(5):
        seg = rng.integers(-1, 5, (20, 30))
        labels = rng.integers(0, k, 5)
        pred = rng.integers(0, k, (20, 30))
        m.update([torch.tensor(pred)], [make_target(seg, labels)])
        sem = np.where(seg >= 0, labels[np.clip(seg, 0, None)], -1)
        valid = sem >= 0
        for c in range(k):
            g, p = (sem == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan) * 100
    assert float(m.compute()["miou"]) == pytest.approx(np.nanmean(iou))


# --------------------------------------------------------------------------------------------------
# mask AP


def random_instances(rng, k, is_thing, n_img=6, h=48, w=64):
    preds, targets = [], []
    thing_classes = [c for c in range(k) if is_thing[c]]
    for img in range(n_img):
        pred, target = random_case(rng, k, is_thing, h=h, w=w)
        # predicted instances: masks of the noisy panoptic prediction + some random boxes
        masks, labels = [], []
        for i, c in enumerate(pred.labels.tolist()):
            m = pred.segments == i
            if m.any():
                masks.append(m)
                labels.append(c)
        for _ in range(int(rng.integers(0, 5))):
            m = torch.zeros(h, w, dtype=torch.bool)
            y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
            m[y0 : y0 + rng.integers(3, 30), x0 : x0 + rng.integers(3, 30)] = True
            masks.append(m)
            labels.append(int(rng.choice(thing_classes)))
        scores = torch.tensor(rng.random(len(masks)), dtype=torch.float32)
        order = scores.argsort(descending=True)
        inst = InstancePrediction(
            torch.stack(masks)[order] if masks else torch.zeros(0, h, w, dtype=torch.bool),
            torch.tensor(labels, dtype=torch.long)[order],
            scores[order],
        )
        preds.append(inst)
        target.image_id = 1000 + img
        targets.append(target)
    return preds, targets


def pycocotools_ap(preds, targets, info: DatasetInfo) -> np.ndarray:
    """COCOeval(segm) straight from pycocotools, with original ids and image ids."""
    from pycocotools import mask as mu
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, res = [], [], []
    for p, t in zip(preds, targets):
        h, w = t.segments.shape
        images.append({"id": t.image_id, "height": h, "width": w})
        for i, (c, cr) in enumerate(zip(t.labels.tolist(), t.is_crowd.tolist())):
            m = (t.segments == i).numpy()
            if not info.is_thing[c] or not m.any():
                continue
            rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({
                "id": len(anns) + 1, "image_id": t.image_id, "category_id": info.category_ids[c],
                "iscrowd": int(cr), "area": float(m.sum()), "segmentation": rle,
                "bbox": list(mu.toBbox(rle)),
            })  # fmt: skip
        for m, c, s in zip(p.masks, p.labels.tolist(), p.scores.tolist()):
            if not info.is_thing[c]:
                continue
            rle = mu.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            res.append({"image_id": t.image_id, "category_id": info.category_ids[c], "segmentation": rle, "score": s})
    cats = [{"id": info.category_ids[c], "name": n} for c, n in enumerate(info.class_names) if info.is_thing[c]]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    gt.createIndex()
    dt = gt.loadRes(res)
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_ap_matches_pycocotools(seed):
    from vitp.metrics import AP_KEYS

    rng = np.random.default_rng(seed)
    is_thing = [True, True, False, True, False]
    info = make_info(is_thing)
    preds, targets = random_instances(rng, 5, is_thing)
    m = MaskAP(info)
    m.update(preds[:3], targets[:3])
    m.update(preds[3:], targets[3:])
    r = m.compute()
    expected = pycocotools_ap(preds, targets, info)
    assert list(r) == list(AP_KEYS)
    for key, v in zip(AP_KEYS, expected):
        if v < 0:
            assert math.isnan(float(r[key]))
        else:
            assert float(r[key]) / 100 == pytest.approx(v, abs=1e-6), key
    assert float(r["map"]) > 0
    ap = m.compute_per_class()["ap"]
    assert math.isnan(ap[2]) and math.isnan(ap[4])
    assert float(np.nanmean(ap.numpy())) == pytest.approx(float(r["map"]), abs=1e-6)
    m.reset()
    assert m._images == []


def test_mask_ap_of_a_panoptic_prediction_and_of_held_masks():
    """A panoptic prediction's thing segments as detections give the AP of the same segments as
    image-size instance masks; masks held at a smaller size give the AP of their full-size resize."""
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    is_thing = [True, True, False, True, False]
    info = make_info(is_thing)
    pans, targets, masks_as_instances, small, full = [], [], [], [], []
    for img in range(5):
        pred, target = random_case(rng, 5, is_thing, h=40, w=56)
        pred.scores = torch.tensor(rng.random(len(pred.labels)), dtype=torch.float32)
        target.image_id = img
        pans.append(pred)
        targets.append(target)
        ids = torch.arange(len(pred.labels))
        masks_as_instances.append(InstancePrediction(pred.segments[None] == ids[:, None, None], pred.labels, pred.scores))
        held = pred.segments[None, ::4, ::4] == ids[:, None, None]  # a coarse copy of each segment
        small.append(InstancePrediction(held, pred.labels, pred.scores, image_size=(40, 56)))
        up = F.interpolate(held[:, None].float(), size=(40, 56), mode="nearest")[:, 0].bool()
        full.append(InstancePrediction(up, pred.labels, pred.scores))
    results = []
    for preds in (pans, masks_as_instances, small, full):
        m = MaskAP(info)
        m.update(preds, targets)
        results.append({k: float(v) for k, v in m.compute().items()})
    assert results[0] == pytest.approx(results[1], nan_ok=True) and results[0]["map"] > 0
    assert results[2] == pytest.approx(results[3], nan_ok=True) and results[2]["map"] > 0
    with pytest.raises(ValueError, match="does not match"):
        MaskAP(info).update([PanopticPrediction(pans[0].segments[:-1], pans[0].labels, pans[0].scores)], targets[:1])


def test_metrics_merged_from_parts_equal_one_metric_on_all():
    """``merge_state`` of metrics updated on parts of the images (as in separate processes) gives
    the metrics of one update on all of them."""
    rng = np.random.default_rng(5)
    is_thing = [True, True, False, True, False]
    info = make_info(is_thing)
    preds, targets = random_instances(rng, 5, is_thing)
    pans = [random_case(rng, 5, is_thing, h=48, w=64)[0] for _ in targets]
    for pan in pans:
        pan.scores = torch.tensor(rng.random(len(pan.labels)), dtype=torch.float32)
    def run(parts):
        merged = None
        for part in parts:
            ms = (PanopticQuality(info), MaskAP(info), MaskAP(info))
            ms[0].update([pans[i] for i in part], [targets[i] for i in part])
            ms[1].update([preds[i] for i in part], [targets[i] for i in part])
            ms[2].update([pans[i] for i in part], [targets[i] for i in part])
            if merged is None:
                merged = ms
            else:
                for a, b in zip(merged, ms):
                    a.merge_state(b)
        return [{k: float(v) for k, v in m.compute().items()} for m in merged]
    whole = run([range(len(targets))])
    for got, expected in zip(run([[4, 0, 2], [1, 5, 3]]), whole):
        assert got == pytest.approx(expected, nan_ok=True)
    assert whole[1]["map"] > 0 and whole[0]["pq"] > 0
    with pytest.raises(ValueError, match="MaskAP"):
        MaskAP(info).merge_state(PanopticQuality(info))


def test_label_map_rles_equal_mask_by_mask_encoding():
    """One column-major pass over a label map gives pycocotools' own RLE of every value's mask
    (absent values, masks that start or end the image, single rows and columns included)."""
    from pycocotools import mask as mu

    from vitp.rle import label_map_rles

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 7), (7, 1), (5, 9), (48, 64)]:
        for case in range(4):
            labels = rng.integers(-1, 6, (h, w))
            if case == 1:
                labels[:] = 2
            elif case == 2:  # blocks: long runs across columns
                labels = np.kron(rng.integers(-1, 6, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4), int))[:h, :w]
            values = [0, 1, 2, 3, 4, 5, 9]
            rles, areas = label_map_rles(labels, values)
            for v, rle, area in zip(values, rles, areas):
                expected = mu.encode(np.asfortranarray((labels == v).astype(np.uint8)))
                assert rle["counts"] == expected["counts"] and list(rle["size"]) == [h, w], (h, w, case, v)
                assert area == int((labels == v).sum())


def test_mask_stack_rles_equal_pycocotools_encoding():
    """Encoding each mask inside its bounding box gives pycocotools' RLE of the whole mask: empty and
    full masks, boxes touching every border, columns that end on 1 where the next starts on 1."""
    from pycocotools import mask as mu

    from vitp.rle import mask_stack_rles

    rng = np.random.default_rng(1)
    for trial in range(200):
        n, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 13)), int(rng.integers(1, 13))
        masks = rng.random((n, h, w)) < rng.random()
        if trial % 4 == 0:  # a box inside the image
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            masks[:, :y0] = False
            masks[:, :, :x0] = False
        if trial % 9 == 0:
            masks[0] = True
            masks[-1] = False
        expected = mu.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        got = mask_stack_rles(masks)
        assert [r["counts"] for r in got] == [r["counts"] for r in expected], trial
        assert all(list(r["size"]) == [h, w] for r in got)
    assert mask_stack_rles(np.zeros((0, 4, 5), bool)) == []


# --------------------------------------------------------------------------------------------------
# holder


def test_segmentation_metrics_holder():
    rng = np.random.default_rng(2)
    is_thing = [True, False, True]
    info = make_info(is_thing)
    sm = SegmentationMetrics(info)
    preds, targets = [], []
    for _ in range(4):
        pan, t = random_case(rng, 3, is_thing)
        sem = pan.labels[pan.segments.clamp(min=0)]
        preds.append(Prediction(semantic=sem, panoptic=pan, instance=None))
        targets.append(t)
    sm.update(preds, targets)
    r = sm.compute()
    assert {"pq", "sq", "rq", "pq_th", "pq_st", "miou"} <= set(r) and "map" not in r
    assert all(isinstance(v, float) for v in r.values())
    assert r["pq"] == pytest.approx(reference_pq([p.panoptic for p in preds], targets, info)["pq"])
    ipreds, itargets = random_instances(rng, 3, is_thing, n_img=2)
    sm.update([Prediction(instance=p) for p in ipreds], itargets)
    r2 = sm.compute()
    assert "map" in r2 and "map_50" in r2
    sm.reset()
    assert sm.compute() == {}
