"""ADE20K panoptic and instance annotations from the official downloads, in the layout Mask2Former's
preparation writes (and ``vitp.data.ADE20KDataModule`` reads)::

    python scripts/prepare_ade20k.py data/ADEChallengeData2016 [--instance-dir DIR] [--category-mapping FILE]

Inputs (under ROOT = the ``ADEChallengeData2016`` directory of ``ADEChallengeData2016.zip``):
``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png`` (0 = ignore,
1..150) and the instance-challenge PNGs ``annotations_instance/{training,validation}/*.png``
(``annotations_instance.tar``: red = instance class 1..100, green = instance number, 0 = none).
The instance class -> semantic class mapping is the instance download's ``categoryMapping.txt``
(``--category-mapping``; built in by default).

Writes to ROOT: ``ade20k_panoptic_{train,val}.json`` + ``ade20k_panoptic_{train,val}/*.png`` (COCO
panoptic; categories 0..149 = annotation value - 1, the 100 instance classes are things; one
segment per stuff class from the semantic map, one per instance, instances drawn over stuff;
segment id = 1000 * (category + 1) + instance number) and ``ade20k_instance_{train,val}.json``
(COCO instances, RLE masks, the 100 thing categories with the same ids).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from vitp.data.ade20k import ADE20K_CLASS_NAMES, INSTANCE_TO_SEMANTIC
from vitp.data.io import id2rgb

SPLITS = {"train": "training", "val": "validation"}


def read_mapping(path: Path | None) -> dict[int, int]:
    """Instance class (1..100) -> semantic annotation value (1..150) from ``categoryMapping.txt``
    (a header line, then ``instance_id semantic_id [full_ade_id]`` per line)."""
    if path is None:
        return {i + 1: s for i, s in enumerate(INSTANCE_TO_SEMANTIC)}
    out: dict[int, int] = {}
    for n, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
            sys.exit(f"{path}:{n}: expected 'instance_id semantic_id ...', got {line!r}")
        out[int(parts[0])] = int(parts[1])
    return out


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def convert_image(sem: np.ndarray, ins: np.ndarray, mapping: dict[int, int], things: set[int], where: str):
    """One image -> (panoptic segment ids, panoptic segments_info, instance annotations)."""
    if sem.max(initial=0) > 150:
        sys.exit(f"{where}: semantic value(s) {sorted(set(np.unique(sem)) - set(range(151)))[:10]} outside 0..150")
    pan = np.zeros(sem.shape, dtype=np.int64)
    segments, instances = [], []
    for value in np.unique(sem):
        if value == 0 or value in things:  # ignore; thing pixels come from the instance map only
            continue
        mask = sem == value
        seg_id = 1000 * int(value)
        pan[mask] = seg_id
        segments.append({"id": seg_id, "category_id": int(value) - 1, "area": int(mask.sum()),
                         "bbox": _bbox(mask), "iscrowd": 0})
    cls_map, num_map = ins[..., 0].astype(np.int64), ins[..., 1].astype(np.int64)
    for number in np.unique(num_map):
        if number == 0:
            continue
        mask = num_map == number
        classes = np.unique(cls_map[mask])
        if len(classes) != 1 or int(classes[0]) not in mapping:
            sys.exit(f"{where}: instance {number} has instance class(es) {classes.tolist()} (expected one of 1..100)")
        category = mapping[int(classes[0])] - 1
        seg_id = 1000 * (category + 1) + int(number)
        pan[mask] = seg_id
        area, bbox = int(mask.sum()), _bbox(mask)
        segments.append({"id": seg_id, "category_id": category, "area": area, "bbox": bbox, "iscrowd": 0})
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        instances.append({"category_id": category, "bbox": bbox, "area": area, "iscrowd": 0,
                          "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
    kept = {s["id"] for s in segments if (pan == s["id"]).any()}  # stuff fully covered by things
    return pan, [s for s in segments if s["id"] in kept], instances


def prepare(root: Path, instance_dir: Path, mapping: dict[int, int], splits: list[str]) -> None:
    things = set(mapping.values())
    categories = [{"id": k, "name": n, "isthing": int(k + 1 in things)} for k, n in enumerate(ADE20K_CLASS_NAMES)]
    for split in splits:
        d = SPLITS[split]
        image_dir, sem_dir, ins_dir = root / "images" / d, root / "annotations" / d, instance_dir / d
        for folder in (image_dir, sem_dir, ins_dir):
            if not folder.is_dir():
                sys.exit(f"{folder}: not found (is {root} the ADEChallengeData2016 directory, with the instance "
                         "annotations extracted?)")
        out_png = root / f"ade20k_panoptic_{split}"
        out_png.mkdir(exist_ok=True)
        images, pan_anns, ins_anns = [], [], []
        for image_path in sorted(image_dir.glob("*.jpg")):
            stem = image_path.stem
            sem_path, ins_path = sem_dir / f"{stem}.png", ins_dir / f"{stem}.png"
            for p in (sem_path, ins_path):
                if not p.is_file():
                    sys.exit(f"{p}: annotation of {image_path.name} not found")
            with Image.open(image_path) as im:
                width, height = im.size
            with Image.open(sem_path) as im:
                sem = np.asarray(im).astype(np.int64)
            with Image.open(ins_path) as im:
                ins = np.asarray(im.convert("RGB"))
            if sem.shape != (height, width) or ins.shape[:2] != (height, width):
                sys.exit(f"{sem_path} / {ins_path}: sizes differ from {image_path.name} ({width}x{height})")
            pan, segments, instances = convert_image(sem, ins, mapping, things, str(ins_path))
            Image.fromarray(id2rgb(pan)).save(out_png / f"{stem}.png")
            images.append({"id": stem, "file_name": image_path.name, "width": width, "height": height})
            pan_anns.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments})
            for a in instances:
                ins_anns.append({"id": len(ins_anns) + 1, "image_id": stem, **a})
        if not images:
            sys.exit(f"{image_dir}: no *.jpg images")
        (root / f"ade20k_panoptic_{split}.json").write_text(
            json.dumps({"images": images, "annotations": pan_anns, "categories": categories}))
        thing_cats = [c for c in categories if c["isthing"]]
        (root / f"ade20k_instance_{split}.json").write_text(
            json.dumps({"images": images, "annotations": ins_anns, "categories": thing_cats}))
        print(f"{split}: {len(images)} images, {sum(len(a['segments_info']) for a in pan_anns)} panoptic segments, "
              f"{len(ins_anns)} instances -> {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the ADEChallengeData2016 directory")
    parser.add_argument("--instance-dir", type=Path, default=None,
                        help="instance PNGs with training/ and validation/ (default ROOT/annotations_instance)")
    parser.add_argument("--category-mapping", type=Path, default=None,
                        help="categoryMapping.txt of the instance download (default: built in)")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    args = parser.parse_args(argv)
    prepare(args.root, args.instance_dir or args.root / "annotations_instance", read_mapping(args.category_mapping),
            args.splits)


if __name__ == "__main__":
    main()
