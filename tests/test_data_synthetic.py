from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vitp.data.io import id2rgb, rgb2id
from vitp.data.synthetic import (
    MARKER_NAME,
    ensure_synthetic_dataset,
    generate_panoptic_dataset,
    read_marker,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_panoptic_id_codec_roundtrip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 92001, (1 << 24) - 1]], np.int64)
    assert (rgb2id(id2rgb(ids)) == ids).all()


def test_determinism(tmp_path):
    a = generate_panoptic_dataset(tmp_path / "a", num_train=3, num_val=2, image_size=64, seed=5)
    b = generate_panoptic_dataset(tmp_path / "b", num_train=3, num_val=2, image_size=64, seed=5)
    c = generate_panoptic_dataset(tmp_path / "c", num_train=3, num_val=2, image_size=64, seed=6)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert da != dc


def test_layout_and_consistency(tiny_coco_root: Path):
    root = tiny_coco_root
    marker = read_marker(root)
    assert marker is not None and marker["num_train"] == 8 and marker["seed"] == 1
    n_crowd = 0
    for split, n in (("train", 8), ("val", 6)):
        pan = json.loads((root / "annotations" / f"panoptic_{split}2017.json").read_text())
        inst = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        cats = {c["id"]: c for c in pan["categories"]}
        ids = sorted(cats)
        assert ids != list(range(1, len(ids) + 1)), "category ids must be non-contiguous"
        assert {c["isthing"] for c in cats.values()} == {0, 1}
        for c in cats.values():
            assert {"id", "name", "supercategory", "isthing", "color"} <= set(c)
        assert {c["id"] for c in inst["categories"]} == {i for i, c in cats.items() if c["isthing"]}
        assert len(pan["images"]) == n and len(pan["annotations"]) == n
        images = {im["id"]: im for im in pan["images"]}
        inst_by_img: dict[int, list] = {}
        for a in inst["annotations"]:
            inst_by_img.setdefault(a["image_id"], []).append(a)
        for ann in pan["annotations"]:
            im = images[ann["image_id"]]
            img = Image.open(root / f"{split}2017" / im["file_name"])
            assert img.mode == "RGB" and img.size == (im["width"], im["height"])
            png = np.array(Image.open(root / "annotations" / f"panoptic_{split}2017" / ann["file_name"]))
            assert png.shape == (im["height"], im["width"], 3)
            seg = rgb2id(png)
            info_ids = {s["id"] for s in ann["segments_info"]}
            present = set(np.unique(seg).tolist()) - {0}
            assert present == info_ids
            thing_segs = {s["id"]: s for s in ann["segments_info"] if cats[s["category_id"]]["isthing"]}
            anns = inst_by_img.get(ann["image_id"], [])
            assert len(anns) == len(thing_segs)
            for s in ann["segments_info"]:
                m = seg == s["id"]
                assert s["area"] == int(m.sum())
                assert s["category_id"] in cats
                n_crowd += s["iscrowd"]
            for a in anns:
                dec = mask_utils.decode(a["segmentation"]).astype(bool)
                match = [sid for sid, s in thing_segs.items()
                         if s["category_id"] == a["category_id"] and s["iscrowd"] == a["iscrowd"]
                         and (dec == (seg == sid)).all()]
                assert len(match) == 1
                x, y, w, h = a["bbox"]
                rows, cols = np.nonzero(dec)
                assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                        rows.max() - rows.min() + 1)
    assert n_crowd > 0


def test_ensure_reuses_and_refuses(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic_dataset(root, num_train=2, num_val=1, image_size=48, seed=0)
    stamp = (root / MARKER_NAME).stat().st_mtime_ns
    ensure_synthetic_dataset(root, num_train=2, num_val=1, image_size=48, seed=0)
    assert (root / MARKER_NAME).stat().st_mtime_ns == stamp
    ensure_synthetic_dataset(root, num_train=1, num_val=1, image_size=48, seed=0)
    assert read_marker(root)["num_train"] == 1
    assert len(list((root / "train2017").iterdir())) == 1
    other = tmp_path / "user"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="marker"):
        ensure_synthetic_dataset(other, num_train=1, num_val=1, image_size=48)


def test_vitp_generate_writes_the_held_out_style(tmp_path, capsys):
    """``vitp-generate ROOT --style shapes`` (the entry point's function): the held-out style, its
    marker, non-square images."""
    from vitp.data.synthetic import main

    main([str(tmp_path / "shapes"), "--style", "shapes", "--num-train", "2", "--num-val", "2", "--image-size", "64"])
    assert read_marker(tmp_path / "shapes")["style"] == "shapes"
    sizes = {Image.open(p).size for p in (tmp_path / "shapes" / "val2017").glob("*.jpg")}
    assert len(sizes) >= 1 and all(w != h for w, h in sizes)
    assert "shapes style" in capsys.readouterr().out
