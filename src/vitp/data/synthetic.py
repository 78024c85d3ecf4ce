"""Procedurally generated panoptic dataset written in the official COCO 2017 panoptic layout.

The default dataset of vitp: it exercises exactly the same loader as real COCO. Layout under
``root``::

    train2017/*.jpg  val2017/*.jpg
    annotations/panoptic_{split}2017.json  annotations/panoptic_{split}2017/*.png
    annotations/instances_{split}2017.json          (detection format, things only, RLE masks)
    .vitp_synthetic.json                            (generation parameters, written last)

PNGs encode segment ids as panopticapi does (``id = R + 256 * G + 256**2 * B``, 0 = void).

Content is built so classification is a real task: stuff classes are textured regions (sky
gradient, grass noise, fence stripes, floor checker, brick wall) with randomised colours; thing
classes are defined by shape *and* texture (disc with dots, tile with stripes, solid triangle,
ring with radial gradient, cross with a small checker, star with speckles) with a random base
colour per instance. Images have several instances, occlusion, truncation at the border, scale
changes, crowd regions (``iscrowd = 1``: a cluster of same-class objects as one segment), void
pixels (thin unlabelled borders between stuff regions, unlabelled noise patches, segments too
small to keep) and a few images with a single stuff region only.

Generation is deterministic: the same parameters give byte-identical files (numpy + PIL only).
What an image looks like (categories, textures, shapes, layout, styles) is drawn in
``vitp.data.synthetic_scene``; this module writes the tree and reuses an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitp.data.io import id2rgb
from vitp.data.synthetic_scene import STYLES, categories, generate_image
from vitp.points import mask_boxes

MARKER_NAME = ".vitp_synthetic.json"
GENERATOR_VERSION = 1

def _xywh(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` box of a non-empty bool mask."""
    y0, x0, y1, x1 = mask_boxes(torch.from_numpy(mask)[None])[0].tolist()
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def _params(num_train, num_val, image_size, seed, style="default") -> dict[str, Any]:
    params = {"generator": "vitp.data.synthetic", "version": GENERATOR_VERSION,
              "num_train": int(num_train), "num_val": int(num_val),
              "image_size": int(image_size), "seed": int(seed)}
    if style != "default":  # markers of default trees written before styles existed stay valid
        params["style"] = style
    return params


def _write_split(root: Path, split: str, split_code: int, num: int, image_size: int, seed: int,
                 cats: list[dict[str, Any]], style: str = "default") -> None:
    from pycocotools import mask as mask_utils

    img_dir = root / f"{split}2017"
    png_dir = root / "annotations" / f"panoptic_{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, pan_anns, inst_anns = [], [], []
    thing_ids = {c["id"] for c in cats if c["isthing"]}
    ann_id = 0
    for i in range(num):
        rng = np.random.default_rng([int(seed), split_code, i])
        rgb, ids, segs = generate_image(rng, image_size, style=style)
        image_id = split_code * 1_000_000 + i + 1
        stem = f"{image_id:012d}"
        h, w = ids.shape
        Image.fromarray(rgb).save(img_dir / f"{stem}.jpg", quality=92)
        Image.fromarray(id2rgb(ids)).save(png_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
        infos = []
        for s in segs:
            m = ids == s["id"]
            info = {"id": s["id"], "category_id": s["category_id"], "iscrowd": s["iscrowd"],
                    "bbox": _xywh(m), "area": int(m.sum())}
            infos.append(info)
            if s["category_id"] in thing_ids:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ann_id += 1
                inst_anns.append({
                    "id": ann_id, "image_id": image_id, "category_id": s["category_id"],
                    "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"]},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(x) for x in mask_utils.toBbox(rle).tolist()],
                    "iscrowd": s["iscrowd"],
                })
        pan_anns.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos})
    info = {"description": "vitp synthetic panoptic dataset", "version": str(GENERATOR_VERSION)}
    pan = {"info": info, "licenses": [], "images": images, "annotations": pan_anns, "categories": cats}
    inst = {"info": info, "licenses": [], "images": images, "annotations": inst_anns,
            "categories": [{k: c[k] for k in ("id", "name", "supercategory")} for c in cats if c["isthing"]]}
    ann_dir = root / "annotations"
    (ann_dir / f"panoptic_{split}2017.json").write_text(json.dumps(pan, separators=(",", ":")))
    (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(inst, separators=(",", ":")))


def generate_panoptic_dataset(
    root: str | os.PathLike,
    num_train: int = 300,
    num_val: int = 50,
    image_size: int = 256,
    seed: int = 0,
    style: str = "default",
) -> Path:
    """Write the synthetic dataset under ``root`` (created; existing files are overwritten).

    Returns ``root`` as a Path. The marker ``root/.vitp_synthetic.json`` (written last) records
    the parameters; see :func:`ensure_synthetic_dataset` for reuse of an existing tree.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cats = categories()
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {tuple(STYLES)}")
    _write_split(root, "train", 1, num_train, image_size, seed, cats, style)
    _write_split(root, "val", 2, num_val, image_size, seed, cats, style)
    params = _params(num_train, num_val, image_size, seed, style)
    (root / MARKER_NAME).write_text(json.dumps(params, indent=1, sort_keys=True))
    return root


def read_marker(root: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(root) / MARKER_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic_dataset(
    root: str | os.PathLike,
    num_train: int = 300,
    num_val: int = 50,
    image_size: int = 256,
    seed: int = 0,
    style: str = "default",
) -> Path:
    """Return ``root`` holding the synthetic dataset with these parameters, generating it if needed.

    An existing tree is reused when its marker matches; a tree with a different marker (one of
    ours) is replaced; a non-empty directory without a marker is never touched (ValueError).
    Generation happens in a sibling temporary directory that is renamed into place, so concurrent
    processes (e.g. DDP ranks) never see a half-written tree.
    """
    root = Path(root)
    want = _params(num_train, num_val, image_size, seed, style)
    if read_marker(root) == want:
        return root
    if root.exists() and read_marker(root) is None and any(root.iterdir()):
        raise ValueError(
            f"{root} exists, is not empty and has no {MARKER_NAME} marker: refusing to write the "
            "synthetic dataset there (choose another root or remove the directory)"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp", dir=root.parent))
    try:
        generate_panoptic_dataset(tmp, num_train, num_val, image_size, seed, style)
        if read_marker(root) == want:  # another process won the race
            return root
        if root.exists():
            old = root.with_name(f".{root.name}.old{os.getpid()}")
            root.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if read_marker(root) != want:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    """``vitp-generate ROOT [--style shapes]``: write a generated dataset."""
    import argparse

    parser = argparse.ArgumentParser(description="Write vitp's generated panoptic dataset (COCO layout).")
    parser.add_argument("root", type=Path)
    parser.add_argument("--style", choices=tuple(STYLES), default="default",
                        help="; ".join(f"{k}: {v}" for k, v in STYLES.items()))
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = ensure_synthetic_dataset(args.root, args.num_train, args.num_val, args.image_size, args.seed, args.style)
    print(f"{root}: {args.style} style, {args.num_train} train / {args.num_val} val images")


if __name__ == "__main__":
    main()
