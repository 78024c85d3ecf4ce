"""Custom COCO-format datasets (panoptic JSON + PNGs, instances JSON with polygons / RLE / crowd) and
COCO detection JSONs as box-only point supervision mixed with mask data; errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

from vitp.data.coco_format import CocoFormatDataModule, CocoInstancesDataset
from vitp.data.io import DatasetError, DatasetFileNotFoundError, id2rgb
from vitp.points import ClassBalancedSampler

H, W = 32, 48
CATEGORIES = [{"id": 5, "name": "apple", "isthing": 1}, {"id": 9, "name": "grass", "isthing": 0},
              {"id": 12, "name": "pear", "isthing": 1}]


def _boxes(rng: np.random.Generator, n: int = 3) -> list[tuple[int, int, int, int, int]]:
    """``n`` random boxes (category, x, y, w, h) of the thing classes."""
    return [(int(rng.choice([5, 12])), int(rng.integers(0, W - 16)), int(rng.integers(0, H - 12)),
             int(rng.integers(6, 16)), int(rng.integers(5, 12))) for _ in range(n)]


def write_custom(root: Path, seed: int = 0, n: int = 3) -> Path:
    """train: panoptic JSON + PNGs; val: instances JSON (polygon, RLE, crowd); boxes: detection JSON."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val", "boxes"):
        (root / split).mkdir()
        images, anns = [], []
        if split == "train":
            (root / "annotations" / "train").mkdir()
        for i in range(n):
            name = f"{split}_{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / split / name)
            images.append({"id": 100 * i + 7, "file_name": name, "height": H, "width": W})
            boxes = _boxes(rng)
            if split == "train":
                pan = np.zeros((H, W), np.int64)
                pan[H - 6:] = 1  # grass (stuff); the rest void
                segs = [{"id": 1, "category_id": 9, "iscrowd": 0}]
                for k, (c, x, y, w, h) in enumerate(boxes[:2], start=2):
                    pan[y:y + h, x:x + w] = k
                    segs.append({"id": k, "category_id": c, "iscrowd": 0})
                segs = [s for s in segs if (pan == s["id"]).any()]
                Image.fromarray(id2rgb(pan)).save(root / "annotations" / "train" / f"{split}_{i}.png")
                anns.append({"image_id": 100 * i + 7, "file_name": f"{split}_{i}.png", "segments_info": segs})
                continue
            for k, (c, x, y, w, h) in enumerate(boxes):
                cat = c if split == "val" else {5: 2, 12: 1}[c]  # the box JSON numbers its classes its own way
                ann = {"id": len(anns) + 1, "image_id": 100 * i + 7, "category_id": cat, "bbox": [x, y, w, h],
                       "iscrowd": int(split == "val" and k == 2), "area": w * h}
                if split == "val":
                    if k == 0:  # polygon (a rectangle)
                        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                    else:  # RLE
                        m = np.zeros((H, W), np.uint8)
                        m[y:y + h, x:x + w] = 1
                        rle = mask_utils.encode(np.asfortranarray(m))
                        ann["segmentation"] = {"size": [H, W], "counts": rle["counts"].decode()}
                anns.append(ann)
        cats = CATEGORIES if split != "boxes" else [{"id": 1, "name": "pear"}, {"id": 2, "name": "apple"}]
        (root / "annotations" / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                        "categories": cats}))
    return root


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_custom(tmp_path_factory.mktemp("custom") / "data")


def test_panoptic_and_instances_formats(custom_root: Path):
    dm = CocoFormatDataModule(root=str(custom_root), image_size=48, num_workers=0)
    dm.setup("fit")
    assert dm.dataset_info.category_ids == (5, 9, 12) and dm.dataset_info.is_thing == (True, False, True)
    train = dm.train_dataset
    assert type(train).__name__ == "CocoPanopticDataset" and len(train) == 3
    val = dm.val_dataset
    assert isinstance(val, CocoInstancesDataset)
    data = json.loads((custom_root / "annotations" / "val.json").read_text())
    for i in range(3):
        s = val[i]
        anns = [a for a in data["annotations"] if a["image_id"] == 100 * i + 7]
        assert s.image_id == 100 * i + 7 and s.is_crowd.tolist() == [False, False, True]
        assert [dm.dataset_info.category_ids[k] for k in s.labels.tolist()] == [a["category_id"] for a in anns]
        areas = [a["area"] for a in anns]
        for k, a in enumerate(anns):  # the smallest box covering a pixel owns it
            x, y, w, h = a["bbox"]
            box = torch.zeros(H, W, dtype=torch.bool)
            box[y:y + h, x:x + w] = True
            smaller = [j for j in range(3) if areas[j] < areas[k] or (areas[j] == areas[k] and j > k)]
            covered = torch.zeros(H, W, dtype=torch.bool)
            for j in smaller:
                xj, yj, wj, hj = anns[j]["bbox"]
                covered[yj:yj + hj, xj:xj + wj] = True
            assert torch.equal(s.segments == k, box & ~covered)


def test_boxes_supervise_points_mixed_with_masks(custom_root: Path):
    dm = CocoFormatDataModule(
        root=str(custom_root), image_size=48, num_workers=0, batch_size=6, hflip_prob=0.0, scale_range=(1.0, 1.0),
        box_datasets=[{"images": "boxes", "json": "annotations/boxes.json"}], box_match_by="name",
        box_center_fraction=0.5, point_sampler=ClassBalancedSampler(num_points=40))
    dm.setup("fit")
    assert len(dm.train_dataset) == 6
    boxes = dm.train_dataset.datasets[1]
    data = json.loads((custom_root / "annotations" / "boxes.json").read_text())
    for i in range(3):
        s = boxes[i]
        assert s.point_source == "box"
        batch = dm.collate(dm.point_sampler, seed=i)([s])
        anns = [a for a in data["annotations"] if a["image_id"] == 100 * i + 7]
        rows = ((batch.points[0, :, 0] + 1) * H / 2 - 0.5).round().long()
        cols = ((batch.points[0, :, 1] + 1) * W / 2 - 0.5).round().long()
        for r, c, label in zip(rows.tolist(), cols.tolist(), batch.point_labels[0].tolist()):
            name = dm.dataset_info.class_names[label]
            centres = [a for a in anns if {1: "pear", 2: "apple"}[a["category_id"]] == name
                       and abs(r + 0.5 - (a["bbox"][1] + a["bbox"][3] / 2)) <= a["bbox"][3] / 4 + 0.5
                       and abs(c + 0.5 - (a["bbox"][0] + a["bbox"][2] / 2)) <= a["bbox"][2] / 4 + 0.5]
            assert centres, (r, c, name)  # every point in the central half of a box of its class
    with pytest.raises(DatasetError, match=r"boxes.json: categories \['1:pear', '2:apple'\] are not in the label"):
        CocoFormatDataModule(root=str(custom_root), box_datasets=[{"images": "boxes", "json": "annotations/boxes.json"}],
                             point_sampler=ClassBalancedSampler(10)).build_dataset("train")


def test_errors_name_the_file_and_problem(custom_root: Path, tmp_path: Path):
    with pytest.raises(DatasetFileNotFoundError, match="val.json: annotation file not found .*wrong root"):
        CocoFormatDataModule(root=str(tmp_path)).dataset_info
    with pytest.raises(ValueError, match="set data.point_sampler"):
        CocoFormatDataModule(root=str(custom_root), box_datasets=[{"images": "boxes", "json": "annotations/boxes.json"}])
    with pytest.raises(DatasetError, match="has no 'segmentation'; use supervision='boxes'"):
        CocoInstancesDataset(custom_root / "boxes", custom_root / "annotations" / "boxes.json")
    bad = json.loads((custom_root / "annotations" / "val.json").read_text())
    bad["annotations"][0]["image_id"] = 999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="bad.json: annotation 1 refers to unknown image id 999"):
        CocoInstancesDataset(custom_root / "val", tmp_path / "bad.json")
    bad["annotations"][0]["image_id"], bad["categories"] = 7, bad["categories"][:2]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    dm = CocoFormatDataModule(root=str(custom_root), val_json=str(tmp_path / "bad.json"))
    with pytest.raises(DatasetError, match="train.json: its categories differ"):
        dm.build_dataset("train")


def test_coco_panoptic_with_instances_json_boxes_in_the_official_names(custom_root: Path, tmp_path: Path):
    """COCO itself: panoptic_train2017 masks + the boxes of instances_train2017.json (same images, same
    category ids) as extra box-only samples."""
    import shutil

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(custom_root / "train", root / "train2017")
    shutil.copytree(custom_root / "annotations" / "train", root / "annotations" / "panoptic_train2017")
    pan = json.loads((custom_root / "annotations" / "train.json").read_text())
    (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(pan))
    things = {c["id"] for c in pan["categories"] if c["isthing"]}
    boxes = [{"id": n, "image_id": a["image_id"], "category_id": s["category_id"], "bbox": [0, 0, 8, 8], "iscrowd": 0}
             for n, (a, s) in enumerate(((a, s) for a in pan["annotations"] for s in a["segments_info"]), 1)
             if s["category_id"] in things]
    detection = {"images": pan["images"], "annotations": boxes, "categories": [c for c in pan["categories"] if c["isthing"]]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(detection))
    dm = CocoFormatDataModule(
        root=str(root), train_images="train2017", train_json="annotations/panoptic_train2017.json",
        val_images="train2017", val_json="annotations/panoptic_train2017.json", image_size=48, num_workers=0,
        box_datasets=[{"images": "train2017", "json": "annotations/instances_train2017.json"}],
        batch_size=4, scale_range=(1.0, 1.0), point_sampler=ClassBalancedSampler(num_points=16))
    dm.setup("fit")
    masks, box = dm.train_dataset.datasets
    assert len(masks) == len(box) == 3 and box.dataset_info == dm.dataset_info
    s = box[0]
    assert s.point_source == "box" and set(s.labels.tolist()) <= {0, 2}  # apple / pear only
    batch = next(iter(dm.train_dataloader()))
    assert batch.points.shape == (4, 16, 2) and (batch.point_labels >= 0).all()
