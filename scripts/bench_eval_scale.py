"""COCO-scale evaluation: vitp's metrics against the official tools on the same exported files (issue 25).

Writes N generated ground truths and predictions of COCO size (640 x 480, 20-100 segments per image,
COCO's 80 thing + 53 stuff categories, some thing segments crowd, void borders) in the official
layouts under ``--dir`` (written once, reused while the generation arguments match):

    annotations/panoptic_val2017.json + panoptic_val2017/*.png   COCO panoptic ground truth
    annotations/instances_val2017.json                           its thing segments as RLE (iscrowd kept)
    annotations/semantic_val2017/*.png                           class per pixel, 255 void (crowd keeps its class)
    predictions/panoptic.json + panoptic/*.png                   panoptic results, as `vitp test` exports them
    predictions/instances.json                                   COCO results: the thing segments, RLE + score
    predictions/semantic/*.png                                   class per pixel

then runs each evaluator in its own process, one after the other, and reports wall time, CPU time of
the process tree and its peak memory (the sum of the PSS of the process and its workers, sampled
every ``--memory-interval`` s), and checks that the numbers agree to 1e-4:

* ``vitp``: ``--vitp-processes`` processes (one per core, as panopticapi) each read a share of the
  PNG files and run ``vitp.metrics``' ``PanopticQuality``, ``MeanIoU`` and ``MaskAP`` on it; their
  states are merged (``merge_state``) and computed once (``MaskAP`` (given the panoptic prediction: its thing segments
  are the detections, the masks ``instances.json`` holds, which it encodes itself in one pass);
* ``panopticapi``: ``pq_compute`` with its worker processes (one per core). It is not on PyPI:
  ``pip install git+https://github.com/cocodataset/panopticapi.git`` or pass ``--panopticapi DIR``
  (a checkout); without it this row is skipped;
* ``pycocotools`` / ``faster-coco-eval``: ``COCOeval`` / ``COCOeval_faster`` ``segm`` on the instance files;
* ``miou-reference``: a NumPy confusion matrix over the semantic PNGs (detectron2's SemSegEvaluator
  arithmetic; the official tools have no mIoU).

    python scripts/bench_eval_scale.py --dir /tmp/eval5000 --images 5000 --panopticapi /tmp/panopticapi
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

NUM_THING, NUM_STUFF = 80, 53  # COCO panoptic's categories
GENERATOR_VERSION = 3  # files written by another version are rewritten
TOOLS = ("vitp", "panopticapi", "pycocotools", "faster-coco-eval", "miou-reference")


def categories() -> list[dict]:
    return [{"id": i + 1, "name": f"c{i + 1}", "isthing": int(i < NUM_THING), "supercategory": "x"}
            for i in range(NUM_THING + NUM_STUFF)]


def _voronoi(seeds: np.ndarray, weights: np.ndarray, h: int, w: int, step: int, border: float) -> np.ndarray:
    """Nearest-seed index per pixel (weighted distance, at 1/``step`` resolution), -1 on borders."""
    ys = (np.arange(h // step) + 0.5) / (h // step)
    xs = (np.arange(w // step) + 0.5) / (w // step)
    d = ((ys[:, None, None] - seeds[:, 0]) ** 2 + (xs[None, :, None] - seeds[:, 1]) ** 2) * weights
    two = np.partition(d, 1, axis=-1)[..., :2]
    label = d.argmin(-1)
    label[two[..., 1] - two[..., 0] < border] = -1
    return label[np.arange(h) * (h // step) // h][:, np.arange(w) * (w // step) // w]


def _segments(index: np.ndarray, classes: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Seed index map -> panoptic ids (1.., 0 void) and each id's class and crowd flag. The seeds of
    one stuff class are merged, and so are the crowd seeds of one thing class: COCO panoptic has at
    most one crowd segment per class and image, and panopticapi counts only one (vitp: their union)."""
    lut, ids, owner, crowds = np.zeros(len(classes) + 1, np.int64), [], {}, []
    for s, (c, cr) in enumerate(zip(classes.tolist(), crowd.tolist())):
        key = c if c > NUM_THING else ("crowd", c) if cr else ("thing", s)
        if key not in owner:
            owner[key] = len(ids) + 1
            ids.append(c)
            crowds.append(int(bool(cr) and c <= NUM_THING))
        lut[s + 1] = owner[key]
    return lut[index + 1], ids, crowds


def generate_one(args: tuple) -> tuple[dict, dict, list[dict], list[dict]]:
    """Write one image's files; return its panoptic GT / prediction records and instance records."""
    i, root, h, w, lo, hi, seed = args
    rng = np.random.default_rng([seed, i])
    n = int(rng.integers(lo, hi + 1))
    stuff = rng.random(n) < 0.35
    stuff_pool = NUM_THING + 1 + rng.choice(NUM_STUFF, 8, replace=False)  # a few stuff classes per image
    classes = np.where(stuff, stuff_pool[rng.integers(0, 8, n)], 1 + rng.integers(0, NUM_THING, n))
    seeds, weights = rng.random((n, 2)), rng.uniform(0.5, 1.5, n)
    gt_ids, gt_classes, crowd = _segments(_voronoi(seeds, weights, h, w, 8, 2e-4), classes, rng.random(n) < 0.05)
    # prediction: moved seeds, some classes swapped, some segments missed (void)
    flip = rng.random(n) < 0.12
    pred_classes = np.where(flip, np.where(stuff, NUM_THING + 1 + rng.integers(0, NUM_STUFF, n),
                                           1 + rng.integers(0, NUM_THING, n)), classes)
    moved = seeds + rng.normal(0, 0.02, (n, 2))
    index = _voronoi(moved, weights * rng.uniform(0.8, 1.25, n), h, w, 4, 1e-4)
    index[np.isin(index, np.flatnonzero(rng.random(n) < 0.08))] = -1
    pred_ids, pred_cls, _ = _segments(index, pred_classes, np.zeros(n, bool))
    scores = rng.uniform(0.05, 1.0, len(pred_cls))
    name = f"{i + 1:012d}"
    records, instances = [], ([], [])
    from pycocotools import mask as mask_utils

    from vitp.data.io import id2rgb
    from vitp.rle import label_map_rles
    for kind, ids, cls in (("gt", gt_ids, gt_classes), ("pred", pred_ids, pred_cls)):
        folder = root / ("annotations/panoptic_val2017" if kind == "gt" else "predictions/panoptic")
        Image.fromarray(id2rgb(ids)).save(folder / f"{name}.png")
        sem = np.concatenate([[255], np.asarray(cls) - 1]).astype(np.uint8)[ids]
        Image.fromarray(sem).save(root / ("annotations/semantic_val2017" if kind == "gt" else "predictions/semantic")
                                  / f"{name}.png")
        rles, area = label_map_rles(ids, range(1, len(cls) + 1))  # one pass, equal to encoding each mask
        boxes = mask_utils.toBbox(rles).tolist() if rles else []
        infos = []
        for k, c in enumerate(cls, start=1):
            if area[k - 1] == 0:
                continue
            rle, bbox = rles[k - 1], boxes[k - 1]
            info = {"id": k, "category_id": int(c), "area": int(area[k - 1]), "bbox": bbox,
                    "iscrowd": crowd[k - 1] if kind == "gt" else 0}
            if kind == "pred":
                info["score"] = float(scores[k - 1])
            infos.append(info)
            if c <= NUM_THING:
                rle["counts"] = rle["counts"].decode("ascii")
                if kind == "gt":
                    instances[0].append({"image_id": i + 1, "category_id": int(c), "segmentation": rle,
                                         "area": float(area[k - 1]), "bbox": bbox, "iscrowd": info["iscrowd"]})
                else:
                    instances[1].append({"image_id": i + 1, "category_id": int(c), "segmentation": rle,
                                         "score": float(scores[k - 1])})
        records.append({"image_id": i + 1, "file_name": f"{name}.png", "segments_info": infos})
    image = {"id": i + 1, "file_name": f"{name}.jpg", "height": h, "width": w}
    return image, records, instances[0], instances[1]


def generate(root: Path, images: int, h: int, w: int, lo: int, hi: int, seed: int, workers: int) -> None:
    manifest = {"images": images, "size": [h, w], "segments": [lo, hi], "seed": seed, "generator": GENERATOR_VERSION}
    done = root / "manifest.json"
    if done.exists() and json.loads(done.read_text()) == manifest:
        return
    for sub in ("annotations/panoptic_val2017", "annotations/semantic_val2017", "predictions/panoptic",
                "predictions/semantic"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    jobs = [(i, root, h, w, lo, hi, seed) for i in range(images)]
    if workers > 1:
        with Pool(workers) as pool:
            out = pool.map(generate_one, jobs, chunksize=16)
    else:
        out = [generate_one(job) for job in jobs]
    cats = categories()
    gt_inst = [a for o in out for a in o[2]]
    for j, a in enumerate(gt_inst, start=1):
        a["id"] = j
    write = lambda p, obj: (root / p).write_text(json.dumps(obj))  # noqa: E731
    write("annotations/panoptic_val2017.json", {"images": [o[0] for o in out], "categories": cats,
                                                 "annotations": [o[1][0] for o in out]})
    write("predictions/panoptic.json", {"annotations": [o[1][1] for o in out]})
    write("annotations/instances_val2017.json", {"images": [o[0] for o in out], "annotations": gt_inst,
                                                  "categories": [c for c in cats if c["isthing"]]})
    write("predictions/instances.json", [a for o in out for a in o[3]])
    done.write_text(json.dumps(manifest))
    print(f"generated {images} images in {time.perf_counter() - t:.0f} s ({root})", file=sys.stderr)


# --- the evaluators (each runs in its own process: `--only NAME`) ---------------------------------

class _Files:
    """One image's files as vitp's metrics take them (read in DataLoader workers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        gt = json.loads((root / "annotations/panoptic_val2017.json").read_text())
        pred = {a["image_id"]: a for a in json.loads((root / "predictions/panoptic.json").read_text())["annotations"]}
        self.pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]

    def __len__(self) -> int:
        return len(self.pairs)

    @staticmethod
    def _index(rgb_path: Path, infos: list[dict]) -> "np.ndarray":
        from vitp.data.io import rgb2id
        ids = rgb2id(np.asarray(Image.open(rgb_path)))
        lut = np.full(max([0, *(s["id"] for s in infos)]) + 1, -1, np.int64)
        lut[[s["id"] for s in infos]] = np.arange(len(infos))
        return lut[ids]

    def __getitem__(self, i: int) -> tuple:
        import torch
        from vitp.structures import PanopticPrediction, Target

        gt, pred = self.pairs[i]
        g = torch.from_numpy(self._index(self.root / "annotations/panoptic_val2017" / gt["file_name"], gt["segments_info"]))
        p = torch.from_numpy(self._index(self.root / "predictions/panoptic" / pred["file_name"], pred["segments_info"]))
        labels = torch.tensor([s["category_id"] - 1 for s in gt["segments_info"]], dtype=torch.long)
        target = Target(masks=torch.zeros(0, 1, 1, dtype=torch.bool), labels=labels,
                        is_crowd=torch.tensor([bool(s["iscrowd"]) for s in gt["segments_info"]]), segments=g,
                        image_id=gt["image_id"], file_name=gt["file_name"], orig_size=tuple(g.shape),
                        valid_size=tuple(g.shape))
        pred_labels = torch.tensor([s["category_id"] - 1 for s in pred["segments_info"]], dtype=torch.long)
        scores = torch.tensor([s["score"] for s in pred["segments_info"]], dtype=torch.float)
        semantic = torch.from_numpy(np.array(Image.open(self.root / "predictions/semantic" / pred["file_name"])))
        semantic = torch.where(semantic == 255, -1, semantic.long())
        return target, PanopticPrediction(p, pred_labels, scores), semantic


_FILES: "_Files | None" = None  # set before the pool forks, so every process shares the parsed JSON


def _new_metrics() -> tuple:
    from vitp.metrics import MaskAP, MeanIoU, PanopticQuality
    from vitp.structures import DatasetInfo

    cats = categories()
    info = DatasetInfo(tuple(c["name"] for c in cats), tuple(c["id"] for c in cats),
                       tuple(bool(c["isthing"]) for c in cats))
    return PanopticQuality(info), MeanIoU(info), MaskAP(info)


def _evaluate_part(indices: list[int]) -> tuple:
    """vitp's three metrics updated on some of the images (in one process of the pool)."""
    import torch

    torch.set_num_threads(1)
    pq, miou, ap = _new_metrics()
    for i in indices:
        target, panoptic, semantic = _FILES[i]
        pq.update([panoptic], [target])
        miou.update([semantic], [target])
        ap.update([panoptic], [target])  # its thing segments are the detections instances.json holds
    return pq, miou, ap


def run_vitp(root: Path, processes: int) -> dict[str, float]:
    """Each of ``processes`` processes reads and evaluates every ``processes``-th image with its own
    metrics (as panopticapi splits images over its workers); their states are merged
    (``Metric.merge_state``) and computed once."""
    global _FILES
    _FILES = _Files(root)
    indices = list(range(len(_FILES)))
    if processes > 1:
        with Pool(processes) as pool:
            parts = pool.map(_evaluate_part, [indices[k::processes] for k in range(processes)])
    else:
        parts = [_evaluate_part(indices)]
    pq, miou, ap = parts[0]
    for other_pq, other_miou, other_ap in parts[1:]:
        pq.merge_state(other_pq)
        miou.merge_state(other_miou)
        ap.merge_state(other_ap)
    out = {k: float(v) for k, v in pq.compute().items()}
    out["miou"] = float(miou.compute()["miou"])
    out.update({f"ap_{k}": float(v) for k, v in ap.compute().items()})
    return out


def run_panopticapi(root: Path, path: str | None) -> dict[str, float]:
    if path:
        sys.path.insert(0, path)
    from panopticapi.evaluation import pq_compute

    with contextlib.redirect_stdout(io.StringIO()):
        res = pq_compute(str(root / "annotations/panoptic_val2017.json"), str(root / "predictions/panoptic.json"),
                         str(root / "annotations/panoptic_val2017"), str(root / "predictions/panoptic"))
    out = {}
    for part, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            out[key + suffix] = 100.0 * res[part][key]
    return out


COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")  # COCOeval.stats, as vitp names them


def run_cocoeval(root: Path, faster: bool) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        if faster:
            from faster_coco_eval import COCO, COCOeval_faster as COCOeval
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        gt = COCO(str(root / "annotations/instances_val2017.json"))
        ev = COCOeval(gt, gt.loadRes(str(root / "predictions/instances.json")), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 is COCOeval's "no such object": NaN, as vitp reports it
    return {f"ap_{k}": 100.0 * float(v) if v >= 0 else float("nan") for k, v in zip(COCO_STATS, ev.stats)}


def run_miou_reference(root: Path) -> dict[str, float]:
    k = NUM_THING + NUM_STUFF  # confusion matrix as detectron2's SemSegEvaluator builds it
    conf = np.zeros((k + 1, k + 1), np.int64)
    for f in sorted((root / "annotations/semantic_val2017").iterdir()):
        gt = np.asarray(Image.open(f)).astype(np.int64)
        pred = np.asarray(Image.open(root / "predictions/semantic" / f.name)).astype(np.int64)
        pred[pred == 255] = k
        keep = gt != 255
        conf += np.bincount((k + 1) * pred[keep] + gt[keep], minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    tp = np.diag(conf)[:k].astype(np.float64)
    # conf[pred, gt]: a class's union is its ground truth (void predictions included: counted wrong, as
    # vitp does) plus its predictions on non-void pixels, minus the hits
    union = conf[:, :k].sum(0) + conf[:k, :k].sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": 100.0 * float(np.nanmean(iou))}


# --- the parent: one child process per evaluator, timed and measured -------------------------------

def _tree_pss(pid: int) -> int:
    """Bytes of PSS of ``pid`` and all its descendants (from /proc; PSS splits the pages forked
    workers share, so the sum is the memory the tree really holds)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def measure(tool: str, args: argparse.Namespace) -> dict:
    """Run one evaluator in a child process: its metrics, wall and CPU seconds, peak PSS of its tree."""
    result = args.dir / f"result_{tool}.json"
    cmd = [sys.executable, __file__, "--dir", str(args.dir), "--only", tool, "--vitp-processes",
           str(args.vitp_processes), *(["--panopticapi", args.panopticapi] if args.panopticapi else [])]
    before = os.times()
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    peak = 0
    while child.poll() is None:
        peak = max(peak, _tree_pss(child.pid))
        time.sleep(args.memory_interval)
    wall = time.perf_counter() - start
    after = os.times()
    if child.returncode != 0:
        raise SystemExit(f"{tool} failed (exit {child.returncode}): {' '.join(cmd)}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"metrics": json.loads(result.read_text()), "wall": wall, "cpu": cpu, "peak_mib": peak / 2**20}


def compare(results: dict[str, dict], tolerance: float = 1e-4) -> list[str]:
    """Lines ``key: vitp value vs tool value, |diff|``; keys only one side has are left out."""
    lines, vitp = [], results["vitp"]["metrics"]
    for tool, r in results.items():
        if tool == "vitp":
            continue
        for key, value in r["metrics"].items():
            if key in vitp:
                diff = abs(vitp[key] - value) if not (np.isnan(value) and np.isnan(vitp[key])) else 0.0
                lines.append(f"{'ok  ' if diff <= tolerance else 'DIFF'} {key}: vitp {vitp[key]:.6f}, {tool} "
                             f"{value:.6f} (|diff| {diff:.1e})")
    return lines


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="where the files are written (and reused)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--segments", type=int, nargs=2, default=(20, 100), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes writing the files")
    parser.add_argument("--vitp-processes", type=int, default=os.cpu_count(),
                        help="processes evaluating a share of the images each with vitp's metrics (merged at the end)")
    parser.add_argument("--memory-interval", type=float, default=0.5,
                        help="seconds between PSS samples (reading /proc/*/smaps_rollup of processes holding GBs "
                             "costs CPU: every 50 ms it took ~40 %% of a core from the measured tools)")
    parser.add_argument("--panopticapi", default=None, help="a panopticapi checkout (when not installed)")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--only", choices=TOOLS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    args.dir = args.dir.resolve()
    if args.only:
        run = {"vitp": lambda: run_vitp(args.dir, args.vitp_processes),
               "panopticapi": lambda: run_panopticapi(args.dir, args.panopticapi),
               "pycocotools": lambda: run_cocoeval(args.dir, faster=False),
               "faster-coco-eval": lambda: run_cocoeval(args.dir, faster=True),
               "miou-reference": lambda: run_miou_reference(args.dir)}[args.only]
        (args.dir / f"result_{args.only}.json").write_text(json.dumps(run()))
        return {}
    generate(args.dir, args.images, *args.size, *args.segments, args.seed, args.workers)
    tools = [t for t in args.tools if t != "panopticapi" or _panopticapi_available(args.panopticapi)]
    if "panopticapi" in args.tools and "panopticapi" not in tools:
        print("panopticapi not found (pip install git+https://github.com/cocodataset/panopticapi.git, or "
              "--panopticapi DIR): its row is skipped", file=sys.stderr)
    results = {}
    for tool in ["vitp", *(t for t in tools if t != "vitp")]:
        results[tool] = measure(tool, args)
        print(f"{tool}: {results[tool]['wall']:.1f} s", file=sys.stderr)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the parent only: the children stay free of torch
    from bench_point_vit import cpu_model

    h, w = args.size
    print(f"{args.images} images {w}x{h}, {args.segments[0]}-{args.segments[1]} segments per image; CPU "
          f"{cpu_model()}, {os.cpu_count()} cores; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at end\n")
    print("| evaluator | metrics | wall (s) | CPU, process tree (s) | peak memory, process tree PSS (MiB) |")
    print("|---|---|---:|---:|---:|")
    for tool, r in results.items():
        keys = "PQ, mIoU, mask AP" if tool == "vitp" else ", ".join(sorted({k.split("_")[0] for k in r["metrics"]}))
        print(f"| {tool} | {keys} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mib']:.0f} |")
    lines = compare(results)
    print("\nagreement (tolerance 1e-4): " + ("all equal" if all(l.startswith("ok") for l in lines) else "DIFFERENCES"))
    for line in lines:
        print("    " + line)
    return results


def _panopticapi_available(path: str | None) -> bool:
    if path:
        return (Path(path) / "panopticapi" / "evaluation.py").exists()
    import importlib.util
    return importlib.util.find_spec("panopticapi") is not None


if __name__ == "__main__":
    main()
