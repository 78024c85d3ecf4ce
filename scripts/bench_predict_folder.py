"""`vitp predict` on a folder of mixed-size photos: images/s and where the time goes (issue 25).

Writes ``--images`` JPEGs (the generated dataset's images, each resized to a long side drawn
log-uniformly between ``--min-side`` and ``--max-side``, 256-4000 px by default) into ``--folder``
once, then runs the real command on them, once per ``--runs`` entry (each a list of extra
arguments; ``default`` adds none), all of them ``--repeats`` times, interleaved:

    vitp predict --config CONFIG --ckpt_path CKPT --data.init_args.path FOLDER \\
        --model.init_args.output.export_dir OUT --trainer.profiler simple ...

and reports the wall time, images/s, the CPU time of the process tree (steadier than wall time on a
shared machine), its peak memory, whether it wrote the same files as the first run and, from Lightning's
``SimpleProfiler``, where the main process spends its time (waiting for the loader's next batch,
the predict step, the callbacks that write the files). Run from the trained default run's
directory (``--workdir``):

    python scripts/bench_predict_folder.py --workdir /tmp/sa_s0 --data-root /tmp/data_default \\
        --folder /tmp/photos500 --images 500 \\
        --runs default "--data.init_args.num_workers 0" "--model.init_args.output.overlays false"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval_scale import _tree_pss  # noqa: E402  (sums the PSS of the vitp process tree)
from seeds_table import mean_std  # noqa: E402

CONFIG = ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"
CHECKPOINT = Path("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")


def make_folder(folder: Path, source: Path, images: int, min_side: int, max_side: int, seed: int) -> list[int]:
    """JPEGs of random long side (log-uniform) from the images under ``source``; reused when the
    folder's manifest matches. Returns the long sides."""
    manifest = {"images": images, "sides": [min_side, max_side], "seed": seed, "source": str(source)}
    done = folder / "manifest.json"
    if done.exists() and json.loads(done.read_text())["args"] == manifest:
        return json.loads(done.read_text())["long_sides"]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {source}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sides = []
    for i in range(images):
        with Image.open(files[i % len(files)]) as im:
            im = im.convert("RGB")
            side = int(round(math.exp(rng.uniform(math.log(min_side), math.log(max_side)))))
            scale = side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
            im.save(folder / f"photo_{i:04d}.jpg", quality=90)
        sides.append(side)
    done.write_text(json.dumps({"args": manifest, "long_sides": sides}))
    return sides


def profile_rows(text: str, top: int) -> list[tuple[str, float, int, float]]:
    """``(action, total s, calls, percent)`` of the SimpleProfiler table in ``text``, largest first."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[\d.e+-]+", cells[3] or "x") and cells[0] not in ("Action", "Total"):
            try:
                rows.append((cells[0], float(cells[3]), int(cells[2]), float(cells[4])))
            except ValueError:
                continue
    return sorted(rows, key=lambda r: -r[1])[:top]


def run_predict(extra: list[str], args: argparse.Namespace, out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "vitp"), "predict", "--config", str(args.config.resolve()),
           "--ckpt_path", str((args.ckpt or args.workdir / CHECKPOINT).resolve()),
           "--data.init_args.path", str(args.folder.resolve()), "--model.init_args.output.export_dir", str(out),
           "--trainer.profiler", "simple", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    if args.data_root is not None:
        cmd += ["--data.init_args.root", str(args.data_root.resolve())]
    cmd += extra
    before = os.times()
    start, peak = time.perf_counter(), 0
    child = subprocess.Popen(cmd, cwd=args.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    while child.poll() is None:
        peak = max(peak, _tree_pss(child.pid))
        time.sleep(0.5)  # reading smaps_rollup of GB-sized processes costs CPU
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    lines = child.stdout.read().splitlines() if child.stdout else []
    if child.returncode != 0:
        raise SystemExit("vitp predict failed:\n" + "\n".join(lines[-40:]))
    written = len(list((out / "panoptic").glob("*.png")))
    return {"wall": wall, "cpu": cpu, "peak_mib": peak / 2**20, "written": written, "profile": profile_rows("\n".join(lines), 8)}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT, help="the trained run's directory")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--ckpt", type=Path, default=None, help=f"default: WORKDIR/{CHECKPOINT}")
    parser.add_argument("--data-root", type=Path, default=None, help="the dataset the images come from (and whose "
                        "label space the config reads); default: the config's")
    parser.add_argument("--folder", type=Path, required=True, help="where the photos are written (and reused)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["default"], help="extra arguments per run ('default': none)")
    parser.add_argument("--out", type=Path, default=None, help="export directories (default: FOLDER.out)")
    parser.add_argument("--repeats", type=int, default=1, help="the runs, interleaved, this many times (mean ± std)")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    source = (args.data_root or args.workdir / "data/generated/synthetic_coco") / "val2017"
    sides = make_folder(args.folder, source if source.exists() else source.parent, args.images, args.min_side,
                        args.max_side, args.seed)
    tries: dict[str, list[dict]] = {run: [] for run in args.runs}
    outs = {}
    for rep in range(args.repeats):
        for i, run in enumerate(args.runs):
            extra = [] if run == "default" else shlex.split(run)
            outs[run] = (args.out or args.folder.with_name(args.folder.name + ".out")) / f"run{i}"
            tries[run].append(run_predict(extra, args, outs[run]))
            print(f"{run}: {tries[run][-1]['wall']:.1f} s", file=sys.stderr)
    from bench_point_vit import cpu_model

    results = {run: summary(r, args.images) for run, r in tries.items()}
    first = next(iter(outs.values()))
    for run, out in outs.items():
        results[run]["same_files_as_first"] = same_files(first, out)
    print(f"{args.images} JPEGs, long side {min(sides)}-{max(sides)} px (median {int(np.median(sides))}); CPU "
          f"{cpu_model()}, {os.cpu_count()} cores; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"at end; {args.repeats} interleaved repetition(s), mean ± std\n")
    print("| run | wall (s) | images/s | CPU, process tree (s) | images per CPU-s | peak memory, PSS (MiB) | files | "
          "same files as the first run |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for run, r in results.items():
        print(f"| `{run}` | {mean_std(r['walls'])} | {mean_std(r['images_per_s'], 2)} | {mean_std(r['cpus'])} | "
              f"{args.images / np.mean(r['cpus']):.3f} | {r['peak_mib']:.0f} | {r['written']} | "
              f"{'yes' if r['same_files_as_first'] else 'NO'} |")
    for run, r in results.items():
        print(f"\nwhere `{run}` spends the main process's time (SimpleProfiler of its last repetition, total s / calls / %):")
        for action, total, calls, pct in r["profile"]:
            print(f"    {total:8.1f} s  {calls:6d}  {pct:5.1f} %  {action}")
    return results


def summary(tries: list[dict], images: int) -> dict:
    """One run's repetitions: walls, CPU times and images/s of each, the largest peak, the last profile."""
    walls = [t["wall"] for t in tries]
    return {"walls": walls, "cpus": [t["cpu"] for t in tries], "images_per_s": [images / w for w in walls],
            "wall": float(np.mean(walls)), "cpu": float(np.mean([t["cpu"] for t in tries])),
            "peak_mib": max(t["peak_mib"] for t in tries), "written": tries[-1]["written"],
            "profile": tries[-1]["profile"]}


def same_files(a: Path, b: Path) -> bool:
    """Whether two export folders hold the same files with the same bytes."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


if __name__ == "__main__":
    main()
