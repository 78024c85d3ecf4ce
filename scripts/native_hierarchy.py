"""Render the grouping hierarchy of a NativeBackbone: image | level 1 | level 2 | level 3.

Level k is the hard partition of the image by the argmax of the chained assignment from the
stride-4 tokens to the groups of level k (stride 8, 16, 32; ``vitp.backbones.hierarchy``); each
segment gets a random colour, boundaries are white. One row per image of the dataset's val split.

The backbone comes from (first that is given):

* ``--backbone DIR_OR_PT``: ``backbone.pt`` (+ ``arch.json`` beside it) written by
  ``scripts/native_maskfree.py`` (a directory holding them, or the ``.pt`` file);
* ``--proposer DIR``: a ``NativeProposer.save_pretrained`` directory (its backbone);
* otherwise a random init of ``--preset`` (seed ``--seed``).

    nice -n 19 .venv/bin/python scripts/native_hierarchy.py --backbone outputs/native_maskfree/seed0 \
        --root outputs/native_maskfree/data --out docs/native_hierarchy.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vitp.backbones.hierarchy import hierarchy_maps, level_num_groups, render_segments
from vitp.backbones.native import NATIVE_PRESETS, NativeBackbone
from vitp.data import CocoPanopticDataModule
from vitp.data.synthetic import ensure_synthetic_dataset, read_marker
from vitp.visualize import figure


def _maskfree():
    """``scripts/native_maskfree.py`` as a module, however this script was started (as a script,
    ``scripts/`` is on ``sys.path``; imported from a test or another directory it is not)."""
    import importlib.util
    import sys

    if "native_maskfree" in sys.modules:
        return sys.modules["native_maskfree"]
    spec = importlib.util.spec_from_file_location("native_maskfree", Path(__file__).with_name("native_maskfree.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["native_maskfree"] = module
    spec.loader.exec_module(module)
    return module


def load_backbone(args: argparse.Namespace) -> tuple[NativeBackbone, str]:
    if args.backbone is not None:
        pt = args.backbone / "backbone.pt" if args.backbone.is_dir() else args.backbone
        arch = json.loads((pt.parent / "arch.json").read_text())
        arch.pop("preset", None)
        backbone = NativeBackbone(**arch)
        backbone.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
        return backbone, f"trained ({pt})"
    if args.proposer is not None:
        from vitp.proposers import NativeProposer

        return NativeProposer(model=str(args.proposer)).backbone, f"proposer ({args.proposer})"
    torch.manual_seed(args.seed)
    return NativeBackbone.from_preset(args.preset), f"random init ({args.preset}, seed {args.seed})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", type=Path, default=None)
    p.add_argument("--proposer", type=Path, default=None)
    p.add_argument("--preset", default="small", choices=sorted(NATIVE_PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None,
                   help="dataset root (default: outputs/native_maskfree/data, generated if missing)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("outputs/native_hierarchy.png"))
    args = p.parse_args(argv)

    torch.set_num_threads(2)
    root = args.root
    if root is None:  # the dataset scripts/native_maskfree.py generated, else generate one like it
        root = Path("outputs/native_maskfree/data")
        if read_marker(root) is None:
            ensure_synthetic_dataset(root, num_train=200, num_val=50, image_size=args.image_size, seed=0)
    dm = CocoPanopticDataModule(root=str(root), image_size=args.image_size, batch_size=1,
                                eval_batch_size=args.num_images, num_workers=0)
    dm.setup("validate")
    backbone, source = load_backbone(args)
    backbone.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = backbone(batch.images)
    maps = hierarchy_maps(out)
    to_uint8 = _maskfree().to_uint8

    panels = []
    for i, t in enumerate(batch.targets):
        vh, vw = t.valid_size
        img = to_uint8(batch.images[i][:, :vh, :vw])
        panels.append(("image", img))
        for level, stride in ((1, 8), (2, 16), (3, 32)):
            lab = maps[level][i, :vh, :vw].numpy()
            used = len(set(lab.ravel().tolist()))
            panels.append((f"level {level} (s{stride}): {used}/{level_num_groups(out, level)}",
                           render_segments(img, lab, seed=level)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(panels, columns=4, title_size=11).save(args.out)
    print(f"{source}: wrote {args.out} ({len(batch.targets)} images; titles: segments used / groups)")


if __name__ == "__main__":
    main()
