"""The default run: ViT-P in miniature on the generated dataset, end to end on a CPU.

1. train a small Mask2Former proposer (its own loss) and save it;
2. train a tiny ViT-P point classifier on sampled points, with that proposer frozen;
3. test: the proposer alone, proposer + ViT-P, and the proposer's masks with oracle classes,
   and print one table (also written to outputs/synthetic/demo_results.md).

Each stage is a plain `vitp` command (printed before it runs), so any stage can be re-run alone.
Pass `--quick` for a smoke run of a few batches, `--seed N` for another training seed (both stages),
`--data-root DIR` for another dataset in the COCO panoptic layout (e.g. the held-out generated style:
`vitp-generate DIR --style shapes`) and `--workdir DIR` to keep runs apart.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("outputs/synthetic")
PROPOSER_CFG = "configs/synthetic/proposer/mask2former_small.yaml"
VITP_CFG = "configs/synthetic/vitp/tiny_mask2former.yaml"
PROPOSER_DIR = OUT / "proposer_mask2former" / "hf_model"  # written by stage 1 (SaveProposer)
CHECKPOINT = OUT / "vitp_tiny_mask2former" / "checkpoints" / "last.ckpt"
VARIANTS = [("proposer alone", "_proposer"), ("proposer + ViT-P", ""), ("oracle classes (upper bound)", "_oracle")]
COLUMNS = [("PQ", "pq"), ("PQ_th", "pq_th"), ("PQ_st", "pq_st"), ("SQ", "sq"), ("RQ", "rq"),
           ("mIoU", "miou"), ("AP", "map")]


def vitp(workdir: Path, *args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("vitp")), *args]
    print(f"\n$ vitp {shlex.join(args)}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=workdir, check=True)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def table(metrics: dict[str, float]) -> str:
    lines = ["| variant | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, suffix in VARIANTS:
        cells = [f"{metrics[f'{key}{suffix}']:.1f}" if f"{key}{suffix}" in metrics else "-" for _, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few batches per stage (smoke test)")
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="where data/generated and outputs/ are written (default: the repository)")
    parser.add_argument("--seed", type=int, default=None, help="training seed of both stages (default: the configs')")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a COCO-panoptic tree to use instead of the generated default dataset")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    quick = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.max_epochs", "1"] if args.quick else []
    if args.seed is not None:
        quick += ["--seed_everything", str(args.seed)]
    data = [] if args.data_root is None else ["--data.init_args.root", str(args.data_root.resolve())]
    proposer_cfg, vitp_cfg = str(ROOT / PROPOSER_CFG), str(ROOT / VITP_CFG)
    export = OUT / "demo_predictions"
    start = time.time()
    vitp(workdir, "fit", "--config", proposer_cfg, *data, *quick)
    vitp(workdir, "fit", "--config", vitp_cfg, *data, *quick)
    vitp(workdir, "test", "--config", vitp_cfg, *data, *(["--trainer.limit_test_batches", "1"] if args.quick else []),
         "--model.init_args.export_dir", str(export), "--ckpt_path", str(CHECKPOINT))
    metrics = json.loads((workdir / export / "metrics.json").read_text())
    result = table(metrics)
    (workdir / OUT / "demo_results.md").write_text(result + "\n")
    print(f"\nViT-P on the generated dataset (test split), {time.time() - start:.0f} s in all:\n")
    print(result)
    print(f"\nunder {workdir}:")
    print(f"  proposer (save_pretrained):  {PROPOSER_DIR}")
    print(f"  ViT-P checkpoints:           {CHECKPOINT.parent}")
    print(f"  logs (CSV):                  {OUT}/*/lightning_logs")
    print(f"  predictions + metrics.json:  {export}")
    print(f"  this table:                  {OUT / 'demo_results.md'}")


if __name__ == "__main__":
    main()
