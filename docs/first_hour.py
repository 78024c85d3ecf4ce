"""Your first hour with vitp: from `make demo` to your own image, through `Segmenter.from_pretrained`.

    make demo                                   # trains the default model (~10-12 min on 2 CPU cores)
    .venv/bin/python docs/first_hour.py --image my_photo.jpg

What it does, step by step (copy any of it into your own code):

1. the trained model as one folder you can share: `make demo` leaves a checkpoint; the first run
   (and a run after `make demo` trained again) writes it with `Segmenter.save_pretrained` to
   outputs/synthetic/<run>/pretrained, <run> being
   the run `make demo` trained last: vitp_tiny_mask2former (the default recipe) or
   vitp_dinov2_small_eomt (`scripts/demo.py --recipe pretrained`)
   (`vitp fit ... --export_pretrained DIR` writes such a folder at the end of training);
2. `Segmenter.from_pretrained(folder)`: loads it from any working directory, no dataset needed
   (a Hugging Face hub id holding such a folder works too);
3. segments your image: prints each segment (class, score, area) and writes the overlay and the
   semantic map (class indices) to --out.

Works on any image PIL reads (RGB, grayscale, RGBA, 16-bit; EXIF orientation applied). The default
model knows only the generated dataset's 11 shape and texture classes: for real photos, train on your own
data (docs/datasets.md) and pass that model's folder as --model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from vitp import Segmenter

REPO = Path(__file__).resolve().parents[1]
# the demo's two recipes (scripts/demo.py --recipe pretrained | scratch): run folder and config
DEMO_RUNS = [  # the default recipe first
    (REPO / "outputs" / "synthetic" / "vitp_tiny_mask2former", REPO / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"),
    (REPO / "outputs" / "synthetic" / "vitp_dinov2_small_eomt", REPO / "configs" / "synthetic" / "vitp" / "dinov2_small_eomt.yaml"),
]
DEMO_IMAGE = REPO / "data" / "generated" / "synthetic_coco" / "val2017" / "000002000001.jpg"


def demo_run() -> tuple[Path, Path]:
    """The demo run whose checkpoint is the newest (the recipe `make demo` ran last): its folder and
    config; the default recipe's when there is none yet."""
    done = [(run, config) for run, config in DEMO_RUNS if (run / "checkpoints" / "last.ckpt").is_file()]
    if not done:
        return DEMO_RUNS[0]
    return max(done, key=lambda rc: (rc[0] / "checkpoints" / "last.ckpt").stat().st_mtime)


def main(argv: list[str] | None = None) -> None:
    run, config = demo_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(run / "pretrained"), help="a pretrained folder or hub id")
    parser.add_argument("--image", default=str(DEMO_IMAGE), help="your image")
    parser.add_argument("--out", default="my_segments", help="folder for the overlay and the semantic map")
    args = parser.parse_args(argv)

    # 1. one shareable folder (written once from the demo's checkpoint)
    model = Path(args.model)
    checkpoint = run / "checkpoints" / "last.ckpt"
    card = model / "vitp_pretrained.json"
    stale = card.is_file() and checkpoint.is_file() and card.stat().st_mtime < checkpoint.stat().st_mtime
    if model == run / "pretrained" and (not card.is_file() or stale):  # none yet, or `make demo` ran again
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: not found; run `make demo` first, or pass --model FOLDER_OR_HUB_ID")
        Segmenter.from_checkpoint(checkpoint, config=config).save_pretrained(model)
        print(f"wrote the demo model as one folder: {model}")

    # 2. load it from anywhere
    seg = Segmenter.from_pretrained(args.model)

    # 3. your image
    result = seg(args.image)
    print(f"{Path(args.image).name}: {len(result.segments)} segments")
    for s in sorted(result.segments, key=lambda s: -s["area"]):
        print(f"  {s['label']:<16} score {s['score']:.2f}  area {s['area']:>7} px  bbox {s['bbox']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    result.overlay().save(out / f"{stem}_overlay.png")
    if result.semantic is not None:  # class indices 0..K-1 (names: seg.class_names)
        Image.fromarray(np.clip(result.semantic, 0, 255).astype(np.uint8)).save(out / f"{stem}_semantic.png")
    print(f"overlay and semantic map written to {out.resolve()}")


if __name__ == "__main__":
    main()
