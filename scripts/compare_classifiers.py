"""Measured comparison of PointViT variants on the generated dataset (issue: one_way vs full
attention, the two point position encodings, argmax vs top-k inference points).

Every variant is trained with `configs/synthetic/vitp/tiny_oracle_masks.yaml` and the same budget,
then tested on ground-truth masks given class-agnostically (so the classifier alone decides every
class). Prints one markdown table; each row's commands are printed as they run.

    python scripts/compare_classifiers.py --epochs 30 --workdir outputs/compare_classifiers
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "vitp" / "tiny_oracle_masks.yaml"
CLF = "--model.init_args.classifier.init_args."
BASELINE = "one_way + sample_pos_embed"  # the config's own settings
TRAIN_VARIANTS = {
    BASELINE: [],
    "full + sample_pos_embed": [f"{CLF}attention", "full"],
    "one_way + linear": [f"{CLF}point_encoding", "linear"],
}
TEST_VARIANTS = [("argmax (top_k 1)", 1), ("top_k 5", 5)]


def vitp(workdir: Path, *args: str) -> None:
    print(f"$ vitp {shlex.join(args)}", flush=True)
    subprocess.run([str(Path(sys.executable).with_name("vitp")), *args], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "compare_classifiers")
    parser.add_argument("--extra", default="", help="extra vitp arguments for every run (quoted)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    rows = []
    for name, overrides in TRAIN_VARIANTS.items():
        run_dir = workdir / name.replace(" + ", "_")
        start = time.time()
        vitp(workdir, "fit", "--config", str(CONFIG), *overrides, *extra, "--trainer.max_epochs", str(args.epochs),
             "--trainer.check_val_every_n_epoch", str(args.epochs), "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(run_dir),
             "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
             f"--trainer.callbacks.dirpath={run_dir / 'ckpt'}", "--trainer.callbacks.save_last=true")
        train_s = time.time() - start
        tests = TEST_VARIANTS if name == BASELINE else TEST_VARIANTS[:1]
        for test_name, top_k in tests:
            export = run_dir / f"test_top{top_k}"
            vitp(workdir, "test", "--config", str(CONFIG), *overrides, *extra, "--ckpt_path",
                 str(run_dir / "ckpt" / "last.ckpt"), "--model.init_args.inference.top_k", str(top_k),
                 "--model.init_args.output.export_dir", str(export), "--trainer.enable_progress_bar", "false")
            m = json.loads((export / "metrics.json").read_text())
            rows.append((name, test_name, last_val_point_acc(run_dir), m["pq"], m["miou"], m["map"], train_s))
    print("\n| variant | inference point | val point acc | PQ | mIoU | AP | train time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, test_name, acc, pq, miou, ap, secs in rows:
        print(f"| {name} | {test_name} | {acc:.1f} | {pq:.1f} | {miou:.1f} | {ap:.1f} | {secs:.0f} |")


def last_val_point_acc(run_dir: Path, key: str = "val/point_acc") -> float:
    """The last value of ``key`` (default `val/point_acc`) in the run's CSV log."""
    values = []
    for path in sorted(run_dir.glob("lightning_logs/version_*/metrics.csv")):
        with open(path) as f:
            values += [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return values[-1] if values else float("nan")


if __name__ == "__main__":
    main()
