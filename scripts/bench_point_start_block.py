"""Accuracy against ``point_start_block`` (the block at which point tokens join the ViT), measured on
the generated dataset with `configs/synthetic/vitp/tiny_oracle_masks.yaml` (4 blocks) and the same
budget for every value, as in ``scripts/compare_classifiers.py`` (whose helpers this reuses).

    python scripts/bench_point_start_block.py --starts 0 2 3 --epochs 10
    python scripts/bench_point_start_block.py --config configs/synthetic/vitp/dinov2_small_oracle_masks.yaml \
        --starts 0 4 8 11 --epochs 4      # the pretrained DINOv2-S/14 classifier (12 blocks)

Each value: ``vitp fit`` for ``--epochs`` epochs, then ``vitp test`` (argmax inference point) on
ground-truth masks given class-agnostically, so the classifier alone decides every class.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_classifiers import CLF, CONFIG, ROOT, last_val_point_acc, vitp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG, help="an oracle-mask config (default: %(default)s)")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench_point_start_block")
    parser.add_argument("--extra", default="", help="extra vitp arguments for every run (quoted)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip the fit of a value whose last.ckpt exists (train time then from the files)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    rows = []
    for k in args.starts:
        overrides = [f"{CLF}point_start_block", str(k)]
        run_dir = workdir / f"start_{k}"
        start = time.time()
        last = run_dir / "ckpt" / "last.ckpt"
        if args.reuse and last.is_file():
            logs = sorted(run_dir.glob("lightning_logs/version_*"), key=lambda p: p.stat().st_mtime)
            start = logs[-1].stat().st_ctime if logs else float("nan")
            train_s = last.stat().st_mtime - start
        else:
            train_s = None
        if train_s is None:
            vitp(workdir, "fit", "--config", str(args.config.resolve()), *overrides, *extra, "--trainer.max_epochs", str(args.epochs),
                 "--trainer.check_val_every_n_epoch", str(args.epochs), "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(run_dir),
                 "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                 f"--trainer.callbacks.dirpath={run_dir / 'ckpt'}", "--trainer.callbacks.save_last=true")
            train_s = time.time() - start
        export = run_dir / "test"
        vitp(workdir, "test", "--config", str(args.config.resolve()), *overrides, *extra, "--ckpt_path",
             str(run_dir / "ckpt" / "last.ckpt"), "--model.init_args.output.export_dir", str(export),
             "--trainer.enable_progress_bar", "false")
        m = json.loads((export / "metrics.json").read_text())
        accs = [last_val_point_acc(run_dir, key) for key in ("val/point_acc", "val/point_acc_thing", "val/point_acc_stuff")]
        rows.append((k, *accs, m["pq"], m["miou"], m["map"], train_s))
        print(f"point_start_block {k}: done in {train_s:.0f} s", flush=True)
    print(f"\n`python {shlex.join(sys.argv)}`\n")
    print("| point_start_block | val point acc | thing | stuff | PQ | mIoU | AP | train time (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, acc, thing, stuff, pq, miou, ap, secs in rows:
        print(f"| {k} | {acc:.1f} | {thing:.1f} | {stuff:.1f} | {pq:.1f} | {miou:.1f} | {ap:.1f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
