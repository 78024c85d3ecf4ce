"""Benchmark vitp's PanopticQuality against torchmetrics' PanopticQuality and a panopticapi-style
per-segment Python loop, on identical synthetic predictions; checks that the numbers agree.

    python scripts/bench_metrics.py [--reps 5] [--n-images 500] [--device cpu]

Synthetic data: per image a Voronoi partition (30-60 cells, noisy distances) with void borders;
the prediction comes from jittered seeds plus pixel noise and label flips. Stuff classes have one
segment per class and the prediction has no void, so torchmetrics' conventions (stuff merged per
class, predicted void treated like ground-truth void) coincide with panopticapi's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from vitp.metrics import PanopticQuality
from vitp.structures import DatasetInfo, PanopticPrediction, Target

K, N_THING = 20, 12
INFO = DatasetInfo(
    class_names=tuple(f"c{i}" for i in range(K)),
    category_ids=tuple(range(1, K + 1)),
    is_thing=tuple(i < N_THING for i in range(K)),
)
OFFSET = 256 * 256 * 256


def _voronoi(seeds: np.ndarray, h: int, w: int, rng: np.random.Generator, border: float):
    """Nearest-seed map at 1/4 resolution (noisy metric), upsampled; -1 on borders if border > 0."""
    hs, ws = max(h // 4, 8), max(w // 4, 8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, hs), torch.linspace(0, 1, ws), indexing="ij")
    s = torch.as_tensor(seeds, dtype=torch.float32)
    d = (yy[..., None] - s[:, 0]) ** 2 + (xx[..., None] - s[:, 1]) ** 2
    d = d * torch.as_tensor(rng.uniform(0.6, 1.6, len(seeds)), dtype=torch.float32)
    two = d.topk(2, dim=-1, largest=False)
    lab = two.indices[..., 0]
    if border > 0:
        lab = torch.where(two.values[..., 1] - two.values[..., 0] < border, torch.full_like(lab, -1), lab)
    return F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()


def _merge_stuff(seg: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """One segment per stuff class (ids remapped to the first segment of that class)."""
    remap = np.arange(len(labels))
    first: dict[int, int] = {}
    for i, c in enumerate(labels):
        if c >= N_THING:
            remap[i] = first.setdefault(int(c), i)
    lut = torch.as_tensor(np.concatenate([remap, [-1]]))
    return lut[seg], labels


def make_pair(h: int, w: int, rng: np.random.Generator) -> tuple[PanopticPrediction, Target]:
    n = int(rng.integers(30, 61))
    seeds = rng.random((n, 2))
    labels = rng.integers(0, K, n)
    gt = _voronoi(seeds, h, w, np.random.default_rng(rng.integers(1 << 31)), border=2e-4)
    gt, labels = _merge_stuff(gt, labels)
    pseeds = seeds + rng.normal(0, 0.02, seeds.shape)
    plabels = labels.copy()
    flip = rng.random(n) < 0.1
    plabels[flip] = rng.integers(0, K, int(flip.sum()))
    pred = _voronoi(pseeds, h, w, np.random.default_rng(rng.integers(1 << 31)), border=0)
    noise = torch.as_tensor(rng.random((h, w)) < 0.02)
    pred[noise] = torch.as_tensor(rng.integers(0, n, int(noise.sum())))
    pred, plabels = _merge_stuff(pred, plabels)
    target = Target(
        masks=torch.zeros(0, 1, 1, dtype=torch.bool), labels=torch.as_tensor(labels),
        is_crowd=torch.zeros(n, dtype=torch.bool), segments=gt, image_id=0, file_name="x.png",
        orig_size=(h, w), valid_size=(h, w),
    )  # fmt: skip
    return PanopticPrediction(pred, torch.as_tensor(plabels), torch.ones(n)), target


# ---------------------------------------------------------------------------------------------
# panopticapi-style reference (pq_compute_single_core loop on numpy id maps, 0 = void)


def panopticapi_single(pan_gt, gt_segms, pan_pred, pred_segms, pq_stat):
    gt_segms = {k: dict(v) for k, v in gt_segms.items()}
    pred_segms = {k: dict(v) for k, v in pred_segms.items()}
    labels, cnt = np.unique(pan_gt, return_counts=True)
    for lab, c in zip(labels, cnt):
        if lab in gt_segms:
            gt_segms[lab]["area"] = c
    labels, cnt = np.unique(pan_pred, return_counts=True)
    for lab, c in zip(labels, cnt):
        if lab in pred_segms:
            pred_segms[lab]["area"] = c
    pred_segms = {k: v for k, v in pred_segms.items() if "area" in v}
    gt_segms = {k: v for k, v in gt_segms.items() if "area" in v}
    joint = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, cnt = np.unique(joint, return_counts=True)
    for lab, c in zip(labels, cnt):
        gt_pred_map[(int(lab // OFFSET), int(lab % OFFSET))] = int(c)
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in gt_pred_map.items():
        if g not in gt_segms or p not in pred_segms or gt_segms[g]["iscrowd"] == 1:
            continue
        if gt_segms[g]["category_id"] != pred_segms[p]["category_id"]:
            continue
        union = pred_segms[p]["area"] + gt_segms[g]["area"] - inter - gt_pred_map.get((0, p), 0)
        iou = inter / union
        if iou > 0.5:
            pq_stat[gt_segms[g]["category_id"]]["tp"] += 1
            pq_stat[gt_segms[g]["category_id"]]["iou"] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segms.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd[info["category_id"]] = g
            continue
        pq_stat[info["category_id"]]["fn"] += 1
    for p, info in pred_segms.items():
        if p in pred_matched:
            continue
        inter = gt_pred_map.get((0, p), 0)
        if info["category_id"] in crowd:
            inter += gt_pred_map.get((crowd[info["category_id"]], p), 0)
        if inter / info["area"] > 0.5:
            continue
        pq_stat[info["category_id"]]["fp"] += 1


def panopticapi_pq(stat) -> tuple[float, float, float]:
    pq = sq = rq = 0.0
    n = 0
    for c in range(K):
        s = stat[c]
        if s["tp"] + s["fp"] + s["fn"] == 0:
            continue
        n += 1
        d = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
        pq += s["iou"] / d
        sq += s["iou"] / s["tp"] if s["tp"] else 0.0
        rq += s["tp"] / d
    return 100 * pq / n, 100 * sq / n, 100 * rq / n


def to_panopticapi(pred: PanopticPrediction, target: Target):
    gt = (target.segments + 1).numpy().astype(np.uint32)
    pr = (pred.segments + 1).numpy().astype(np.uint32)
    gsegs = {i + 1: {"category_id": int(c), "iscrowd": int(cr)}
             for i, (c, cr) in enumerate(zip(target.labels.tolist(), target.is_crowd.tolist()))}  # fmt: skip
    psegs = {i + 1: {"category_id": int(c)} for i, c in enumerate(pred.labels.tolist())}
    return gt, gsegs, pr, psegs


def to_torchmetrics(pred: PanopticPrediction, target: Target):
    def enc(seg, labels):
        cat = labels[seg.clamp(min=0)]
        cat = torch.where(seg < 0, torch.full_like(cat, -1), cat)
        return torch.stack([cat, seg + 1], -1)[None]

    return enc(pred.segments, pred.labels), enc(target.segments, target.labels)


def new_tm():
    from torchmetrics.detection import PanopticQuality as TM

    return TM(things=list(range(N_THING)), stuffs=list(range(N_THING, K)), return_sq_and_rq=True)


# ---------------------------------------------------------------------------------------------


def per_image(h: int, w: int, reps: int, device: str, tm_reps: int) -> None:
    rng = np.random.default_rng(0)
    pairs = [make_pair(h, w, rng) for _ in range(reps)]
    times = defaultdict(list)
    ours, tm, stat = PanopticQuality(INFO).to(device), new_tm(), defaultdict(lambda: defaultdict(float))
    ours_sub = PanopticQuality(INFO)  # the images torchmetrics saw, for the equality check
    for i, (p, t) in enumerate(pairs):
        pd = PanopticPrediction(p.segments.to(device), p.labels.to(device), p.scores)
        td = t.to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ours.update([pd], [td])
        if device == "cuda":
            torch.cuda.synchronize()
        times["vitp"].append(time.perf_counter() - t0)
        args = to_panopticapi(p, t)
        t0 = time.perf_counter()
        panopticapi_single(*args, stat)
        times["panopticapi-style"].append(time.perf_counter() - t0)
        if i < tm_reps:
            tp, tt = to_torchmetrics(p, t)
            t0 = time.perf_counter()
            tm.update(tp, tt)
            times["torchmetrics"].append(time.perf_counter() - t0)
            ours_sub.update([p], [t])
    r = ours.compute()
    ref = panopticapi_pq(stat)
    assert np.allclose([float(r["pq"]), float(r["sq"]), float(r["rq"])], ref, atol=1e-9), (r, ref)
    rs = ours_sub.compute()
    tmr = tm.compute() * 100
    assert np.allclose([float(rs["pq"]), float(rs["sq"]), float(rs["rq"])], tmr.tolist(), atol=1e-3), (rs, tmr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nper image {h}x{w} ({device}; median of {reps}, torchmetrics of {len(times['torchmetrics'])}; "
          f"PQ/SQ/RQ identical in all three)")  # fmt: skip
    for k, v in med.items():
        print(f"  {k:<18} {v * 1e3:10.2f} ms   {v / med['vitp']:8.1f}x vitp")


def full_set(n: int, h: int, w: int, device: str) -> None:
    rng = np.random.default_rng(1)
    pairs = [make_pair(h, w, rng) for _ in range(n)]
    tm_in = [to_torchmetrics(p, t) for p, t in pairs]
    pa_in = [to_panopticapi(p, t) for p, t in pairs]
    dev_pairs = [(PanopticPrediction(p.segments.to(device), p.labels.to(device), p.scores), t.to(device))
                 for p, t in pairs]  # fmt: skip
    res = {}
    t0 = time.perf_counter()
    ours = PanopticQuality(INFO).to(device)
    for p, t in dev_pairs:
        ours.update([p], [t])
    r = ours.compute()
    res["vitp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stat = defaultdict(lambda: defaultdict(float))
    for a in pa_in:
        panopticapi_single(*a, stat)
    ref = panopticapi_pq(stat)
    res["panopticapi-style"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tm = new_tm()
    for a in tm_in:
        tm.update(*a)
    tmr = tm.compute() * 100
    res["torchmetrics"] = time.perf_counter() - t0
    mine = [float(r["pq"]), float(r["sq"]), float(r["rq"])]
    assert np.allclose(mine, ref, atol=1e-9) and np.allclose(mine, tmr.tolist(), atol=1e-3), (mine, ref, tmr)
    print(f"\nfull set: {n} images {h}x{w} ({device}; update + compute; PQ {mine[0]:.3f} identical in all three)")
    for k, v in res.items():
        print(f"  {k:<18} {v:10.2f} s    {v / res['vitp']:8.1f}x vitp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tm-reps-large", type=int, default=3, help="torchmetrics repetitions at 1024x2048")
    ap.add_argument("--n-images", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
          f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")  # fmt: skip
    per_image(512, 512, args.reps, args.device, tm_reps=args.reps)
    per_image(1024, 2048, args.reps, args.device, tm_reps=min(args.tm_reps_large, args.reps))
    full_set(args.n_images, 256, 256, args.device)


if __name__ == "__main__":
    main()
