"""One figure of the default run: image | proposer alone | proposer + ViT-P | ground truth.

Reads a trained default run (`make demo` / `scripts/demo.py`: the ViT-P checkpoint and the saved
proposer under outputs/synthetic/, the generated dataset under data/generated/) and renders a few
test images of the generated dataset through `vitp.Segmenter` (the `vitp predict` path): the
proposer's own classes and the fused ViT-P classes come from the same proposals in one pass.

    python scripts/make_figure.py                       # -> docs/figure.png
    python scripts/make_figure.py --workdir /tmp/runs/s0 --images 3 --out docs/figure.png

Arguments after `--` go to `vitp` as overrides (e.g. `-- --data.init_args.root /data/coco`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"
CHECKPOINT = Path("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="directory of the run (outputs/, data/generated/); relative config paths resolve here")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the ViT-P training config")
    parser.add_argument("--ckpt", type=Path, default=None, help=f"checkpoint (default: WORKDIR/{CHECKPOINT})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figure.png", help="PNG to write")
    parser.add_argument("--images", type=int, default=3, help="rows: test images 0..N-1 (after --first)")
    parser.add_argument("--first", type=int, default=0, help="index of the first test image")
    args = parser.parse_args(argv)

    import numpy as np

    from vitp import Segmenter
    from vitp.data.io import load_rgb
    from vitp.visualize import figure, render_prediction, render_target

    out = args.out.resolve()
    config, workdir = args.config.resolve(), args.workdir.resolve()
    ckpt = (args.ckpt or workdir / CHECKPOINT).resolve()
    old = os.getcwd()
    os.chdir(workdir)
    try:
        seg = Segmenter.from_checkpoint(ckpt, config=config, overrides=overrides)
        dataset = seg.datamodule.build_dataset("test")
        samples = [dataset[i] for i in range(args.first, min(len(dataset), args.first + args.images))]
        images = [load_rgb(s.image_path) for s in samples]  # dataset images: the annotated pixels
        inputs = [(a, s.file_name, s.image_path) for a, s in zip(images, samples)]
        variants = ("proposer", "vitp") if "proposer" in seg.module.variant_names else (seg.module.main_variant,)
        predictions = [p for _, p in seg._run(inputs, variants)]
    finally:
        os.chdir(old)
    info = seg.dataset_info
    panels = []
    for image, sample, preds in zip(images, samples, predictions):
        from vitp.structures import Target

        target = Target(masks=sample.masks, labels=sample.labels, is_crowd=sample.is_crowd,
                        segments=sample.segments, image_id=sample.image_id, file_name=sample.file_name,
                        orig_size=sample.orig_size, valid_size=tuple(sample.image.shape[-2:]))
        panels.append((sample.file_name, image))
        if "proposer" in preds:
            panels.append(("proposer alone", render_prediction(image, preds["proposer"], info)))
        panels.append(("proposer + ViT-P", render_prediction(image, preds[seg.module.main_variant], info)))
        panels.append(("ground truth", render_target(image, target, info)))
    columns = len(panels) // len(samples)
    sheet = figure([(t, np.asarray(p)) for t, p in panels], columns=columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out} ({len(samples)} images x {columns} panels)")
    return out


if __name__ == "__main__":
    main()
