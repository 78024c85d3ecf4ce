from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vitp.data import CocoPanopticDataModule, CocoPanopticDataset, DatasetError, DatasetFileNotFoundError
from vitp.data.collate import PanopticCollate
from vitp.data.io import id2rgb, load_panoptic_png
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitp.points import PointSampler, pixel_to_point
from vitp.structures import Batch, Target


@pytest.fixture
def tree(tiny_coco_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny dataset."""
    dst = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, dst)
    return dst


def _json(root: Path, split: str = "val") -> dict:
    return json.loads((root / "annotations" / f"panoptic_{split}2017.json").read_text())


def _write_json(root: Path, data: dict, split: str = "val") -> None:
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))


def _unnormalize(img: torch.Tensor) -> np.ndarray:
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((img * s + m) * 255).permute(1, 2, 0).numpy()


def _check_target_contract(batch: Batch) -> None:
    B, C, H, W = batch.images.shape
    assert batch.images.dtype == torch.float32 and C == 3
    assert len(batch.targets) == B
    for i, t in enumerate(batch.targets):
        n = t.labels.shape[0]
        assert t.masks.dtype == torch.bool and t.masks.shape == (n, H, W)
        assert t.labels.dtype == torch.long and t.is_crowd.dtype == torch.bool and t.is_crowd.shape == (n,)
        assert t.segments.dtype == torch.long and tuple(t.segments.shape) == t.orig_size
        assert t.segments.numel() == 0 or int(t.segments.max()) < n
        assert int(t.segments.min()) >= -1
        h, w = t.valid_size
        assert 0 < h <= H and 0 < w <= W
        assert not t.masks[:, h:, :].any() and not t.masks[:, :, w:].any()
        assert (t.masks.sum(0) <= 1).all(), "masks must not overlap"
        assert (batch.images[i, :, h:, :] == 0).all() and (batch.images[i, :, :, w:] == 0).all()
        assert isinstance(t.file_name, str) and t.file_name


# ------------------------------------------------------------------------------- basic loading


def test_dataset_info_and_num_classes(tiny_coco_root):
    dm = CocoPanopticDataModule(root=str(tiny_coco_root), num_workers=0)
    info = dm.dataset_info
    assert list(info.category_ids) == sorted(info.category_ids)
    assert info.category_ids[:3] == (1, 3, 7)
    assert dm.num_classes == 11 == info.num_classes
    assert info.is_thing[0] and not info.is_thing[-1]


def test_eval_batches_match_png(tiny_coco_root):
    dm = CocoPanopticDataModule(root=str(tiny_coco_root), batch_size=2, eval_batch_size=4,
                                num_workers=0, image_size=96)
    dm.setup("validate")
    pan = _json(tiny_coco_root)
    anns = {a["image_id"]: a for a in pan["annotations"]}
    info = dm.dataset_info
    seen, crowd = 0, 0
    for batch in dm.val_dataloader():
        assert batch.images.shape[-2:] == (96, 96)
        assert batch.points is None
        _check_target_contract(batch)
        for t in batch.targets:
            ann = anns[t.image_id]
            ids = load_panoptic_png(tiny_coco_root / "annotations" / "panoptic_val2017" / ann["file_name"])
            assert tuple(ids.shape) == t.orig_size
            assert len(ann["segments_info"]) == len(t.labels)
            seg = t.segments.numpy()
            assert ((seg == -1) == (ids == 0)).all()
            for k, s in enumerate(ann["segments_info"]):
                assert ((seg == k) == (ids == s["id"])).all()
                assert info.category_ids[int(t.labels[k])] == s["category_id"]
                assert bool(t.is_crowd[k]) == bool(s["iscrowd"])
                crowd += s["iscrowd"]
            # masks are the nearest-resized segment map inside the valid region
            h, w = t.valid_size
            assert max(h, w) == 96
            resized = cv2.resize(seg.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
            for k in range(len(t.labels)):
                assert (t.masks[k, :h, :w].numpy() == (resized == k)).all()
            seen += 1
    assert seen == 6 and crowd > 0


def test_pad_per_batch_with_size_divisor(tiny_coco_root):
    dm = CocoPanopticDataModule(root=str(tiny_coco_root), eval_batch_size=3, num_workers=0,
                                image_size=100, size_divisor=32, pad_to_square=False)
    dm.setup("test")
    for batch in dm.test_dataloader():
        H, W = batch.images.shape[-2:]
        assert H % 32 == 0 and W % 32 == 0
        assert H - 32 < max(t.valid_size[0] for t in batch.targets) <= H
        _check_target_contract(batch)


class _ColourCoded(CocoPanopticDataset):
    """Replaces each image with a colour per segment, to check image/mask alignment."""

    COLOURS = np.array([[(37 * k) % 256, (91 * k + 50) % 256, (151 * k + 100) % 256] for k in range(64)],
                       np.uint8)

    def load_raw(self, index):
        raw = super().load_raw(index)
        seg = raw["segments"]
        img = np.where((seg >= 0)[..., None], self.COLOURS[np.clip(seg, 0, None)], 0).astype(np.uint8)
        raw["image"] = img
        return raw


def test_train_augmentation_keeps_masks_aligned(tiny_coco_root):
    ds = _ColourCoded(tiny_coco_root, "train", train=True, image_size=64, scale_range=(0.5, 2.0),
                      hflip_prob=0.5)
    torch.manual_seed(0)
    sizes, dropped = set(), 0
    for rep in range(3):
        for i in range(len(ds)):
            s = ds[i]
            h, w = s.image.shape[-2:]
            sizes.add((h, w))
            assert h <= 64 and w <= 64
            n = len(s.labels)
            assert s.masks.shape == (n, h, w)
            assert s.masks.flatten(1).any(1).all(), "vanished segments must be dropped in train"
            assert s.segments.max() < n
            raw = ds.load_raw(i)
            dropped += len(raw["labels"]) - n
            img = _unnormalize(s.image)
            for k in range(n):
                m = s.masks[k].numpy().astype(np.uint8)
                inner = cv2.erode(m, np.ones((5, 5), np.uint8)).astype(bool)
                if inner.sum() < 4:
                    continue
                # colour of this segment in the original -> which original index it was
                orig_idx = np.flatnonzero((s.segments.numpy() == k).reshape(-1))
                assert orig_idx.size > 0
                orig_k = int(raw["segments"].reshape(-1)[orig_idx[0]])
                assert int(raw["labels"][orig_k]) == int(s.labels[k])
                colour = _ColourCoded.COLOURS[orig_k].astype(np.float32)
                err = np.abs(img[inner] - colour).max(-1)
                # nearest-resized masks vs area/linear-resized image: thin structures of another
                # segment inside this one may blur into a few pixels; a misalignment would not be few
                assert np.median(err) < 1.0 and (err < 3.0).mean() > 0.95
    assert len(sizes) > 3, "scale jitter should vary sizes"
    assert dropped > 0, "some crops should drop segments"


def test_train_loader_with_workers_and_points(tiny_coco_root):
    class FirstPixelSampler(PointSampler):
        """One point per non-crowd mask at its first pixel (P varies per image)."""

        def __call__(self, target: Target, generator=None):
            pts, lbs = [], []
            for m, lab, crowd in zip(target.masks, target.labels, target.is_crowd):
                if crowd:
                    continue
                r, c = np.unravel_index(int(m.flatten().nonzero()[0]), m.shape)
                pts.append(pixel_to_point(torch.tensor([r]), torch.tensor([c]), target.valid_size)[0])
                lbs.append(lab)
            torch.rand((), generator=generator)
            if not pts:
                return torch.zeros((0, 2)), torch.zeros(0, dtype=torch.long)
            return torch.stack(pts), torch.stack(lbs)

    dm = CocoPanopticDataModule(root=str(tiny_coco_root), batch_size=4, num_workers=1, image_size=64,
                                point_sampler=FirstPixelSampler(), val_points=True)
    dm.setup("fit")
    n = 0
    for batch in dm.train_dataloader():
        _check_target_contract(batch)
        assert batch.images.shape[-2:] == (64, 64)
        B, P = batch.point_labels.shape
        assert batch.points.shape == (B, P, 2) and batch.points.dtype == torch.float32
        assert batch.point_labels.dtype == torch.long
        for i, t in enumerate(batch.targets):
            want = t.labels[~t.is_crowd]
            got = batch.point_labels[i]
            assert got[: len(want)].tolist() == want.tolist()
            assert (got[len(want):] == -1).all()
        n += B
    assert n == 8
    vb = next(iter(dm.val_dataloader()))
    assert vb.points is not None and vb.point_labels.shape[0] == len(vb)
    dm2 = CocoPanopticDataModule(root=str(tiny_coco_root), num_workers=0, point_sampler=FirstPixelSampler())
    dm2.setup("validate")
    assert next(iter(dm2.val_dataloader())).points is None


def test_max_samples_and_transfer(tiny_coco_root):
    dm = CocoPanopticDataModule(root=str(tiny_coco_root), batch_size=2, num_workers=0, image_size=64,
                                max_train_samples=3, max_eval_samples=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 2
    batch = next(iter(dm.val_dataloader()))
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, Batch) and len(moved) == 2


# --------------------------------------------------------------------------------- odd images


def test_grayscale_and_cmyk_jpegs(tree):
    pan = _json(tree)
    f0, f1 = pan["images"][0]["file_name"], pan["images"][1]["file_name"]
    Image.open(tree / "val2017" / f0).convert("L").save(tree / "val2017" / f0, quality=95)
    Image.open(tree / "val2017" / f1).convert("CMYK").save(tree / "val2017" / f1, quality=95)
    assert Image.open(tree / "val2017" / f0).mode == "L"
    assert Image.open(tree / "val2017" / f1).mode == "CMYK"
    ds = CocoPanopticDataset(tree, "val", image_size=64)
    s = ds[0]
    assert s.image.shape[0] == 3
    img = _unnormalize(s.image)
    assert np.abs(img[..., 0] - img[..., 1]).max() < 1.0
    assert ds[1].image.shape[0] == 3
    assert ds.load_raw(1)["image"].shape[-1] == 3


def test_image_without_segments(tree):
    pan = _json(tree)
    h, w = 50, 70
    image_id = 424242
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tree / "val2017" / "empty.jpg")
    Image.fromarray(id2rgb(np.zeros((h, w), np.int64))).save(
        tree / "annotations" / "panoptic_val2017" / "empty.png")
    pan["images"].insert(0, {"id": image_id, "file_name": "empty.jpg", "height": h, "width": w})
    pan["annotations"].insert(0, {"image_id": image_id, "file_name": "empty.png", "segments_info": []})
    _write_json(tree, pan)
    for train in (False, True):
        ds = CocoPanopticDataset(tree, "val", train=train, image_size=64)
        s = ds[0]
        assert s.image_id == image_id and s.file_name == "empty.jpg"
        assert s.masks.shape[0] == 0 and s.labels.numel() == 0
        assert s.segments.shape == (h, w) and (s.segments == -1).all()
        batch = PanopticCollate(32, 64)([s, ds[1]])
        _check_target_contract(batch)


def test_predict_dir(tmp_path, tiny_coco_root):
    d = tmp_path / "mine"
    d.mkdir()
    Image.fromarray(np.zeros((40, 90, 3), np.uint8)).save(d / "a.png")
    Image.fromarray(np.full((77, 33), 128, np.uint8)).save(d / "b.JPG")
    (d / "notes.txt").write_text("not an image")
    dm = CocoPanopticDataModule(root=str(tiny_coco_root), predict_dir=str(d), eval_batch_size=4,
                                num_workers=0, image_size=64)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert len(batch) == 2
    _check_target_contract(batch)
    a, b = batch.targets
    assert (a.file_name, b.file_name) == ("a.png", "b.JPG")
    assert a.orig_size == (40, 90) and a.valid_size == (28, 64)
    assert b.orig_size == (77, 33) and b.valid_size == (64, 27)
    assert a.masks.shape[0] == 0 and (a.segments == -1).all()


def test_default_synthetic_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = CocoPanopticDataModule(num_workers=0, synthetic_num_train=2, synthetic_num_val=1,
                                synthetic_image_size=48, image_size=48)
    assert dm.num_classes == 11  # generated lazily by dataset_info
    root = tmp_path / "data" / "generated" / "synthetic_coco"
    assert (root / "annotations" / "panoptic_train2017.json").is_file()
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1


def test_cli_signature_parses(tiny_coco_root):
    from jsonargparse import ArgumentParser

    p = ArgumentParser()
    p.add_class_arguments(CocoPanopticDataModule, "data")
    cfg = p.parse_args(["--data.root", str(tiny_coco_root), "--data.scale_range", "[0.8, 1.25]",
                        "--data.image_size", "64"])
    init = p.instantiate_classes(cfg)
    dm = init.data
    assert dm.scale_range == (0.8, 1.25) and dm.image_size == 64 and dm.num_classes == 11


# ---------------------------------------------------------------------------------- bad input


def _first(tree, split="val"):
    pan = _json(tree, split)
    return pan, pan["images"][0], pan["annotations"][0]


def test_missing_json_names_path(tree):
    (tree / "annotations" / "panoptic_val2017.json").unlink()
    with pytest.raises(DatasetFileNotFoundError, match="panoptic_val2017.json"):
        CocoPanopticDataset(tree, "val")
    with pytest.raises(FileNotFoundError, match="panoptic_test2017.json"):
        CocoPanopticDataset(tree, "test")


def test_missing_image(tree):
    _, im, _ = _first(tree)
    (tree / "val2017" / im["file_name"]).unlink()
    with pytest.raises(DatasetFileNotFoundError, match=im["file_name"]):
        CocoPanopticDataset(tree, "val")[0]


def test_missing_png(tree):
    _, _, ann = _first(tree)
    (tree / "annotations" / "panoptic_val2017" / ann["file_name"]).unlink()
    with pytest.raises(DatasetFileNotFoundError, match=ann["file_name"]):
        CocoPanopticDataset(tree, "val")[0]


def test_png_size_mismatch(tree):
    _, _, ann = _first(tree)
    p = tree / "annotations" / "panoptic_val2017" / ann["file_name"]
    im = Image.open(p)
    im.resize((im.width + 3, im.height), Image.NEAREST).save(p)
    with pytest.raises(DatasetError, match=rf"{ann['file_name']}.*size"):
        CocoPanopticDataset(tree, "val")[0]


def test_png_id_not_in_segments_info(tree):
    pan, _, ann = _first(tree)
    removed = ann["segments_info"].pop()
    _write_json(tree, pan)
    with pytest.raises(DatasetError, match=rf"{ann['file_name']}.*{removed['id']}.*not in the segments_info"):
        CocoPanopticDataset(tree, "val")[0]


def test_segments_info_id_not_in_png(tree):
    pan, _, ann = _first(tree)
    ann["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1})
    _write_json(tree, pan)
    with pytest.raises(DatasetError, match=rf"{ann['file_name']}.*4242.*do not occur"):
        CocoPanopticDataset(tree, "val")[0]


def test_unknown_category(tree):
    pan, _, ann = _first(tree)
    ann["segments_info"][0]["category_id"] = 999
    _write_json(tree, pan)
    with pytest.raises(DatasetError, match=r"panoptic_val2017.json.*unknown category id 999"):
        CocoPanopticDataset(tree, "val")


def test_image_size_differs_from_json(tree):
    pan, im, _ = _first(tree)
    im["width"] += 1
    _write_json(tree, pan)
    with pytest.raises(DatasetError, match=im["file_name"]):
        CocoPanopticDataset(tree, "val")[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image(tree, damage):
    _, im, _ = _first(tree)
    p = tree / "val2017" / im["file_name"]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a jpeg" * 10)
    with pytest.raises(DatasetError, match=im["file_name"]):
        CocoPanopticDataset(tree, "val")[0]


# --------------------------------------------------------------------------------- real COCO


def test_real_coco_sample(coco_sample_root):
    ds = CocoPanopticDataset(coco_sample_root, "val", image_size=128)
    info = ds.dataset_info
    assert info.num_classes == 133
    assert info.class_names[0] == "person" and info.category_ids[0] == 1
    assert list(info.category_ids) == sorted(info.category_ids)
    assert sum(info.is_thing) == 80
    assert info.contiguous_id(200) == 132
    pan = json.loads((coco_sample_root / "annotations" / "panoptic_val2017.json").read_text())
    anns = {a["image_id"]: a for a in pan["annotations"]}
    assert len(ds) == 2
    batch = PanopticCollate(32, 128)([ds[0], ds[1]])
    _check_target_contract(batch)
    for t in batch.targets:
        ann = anns[t.image_id]
        ids = load_panoptic_png(coco_sample_root / "annotations" / "panoptic_val2017" / ann["file_name"])
        assert tuple(ids.shape) == t.orig_size
        for k, s in enumerate(ann["segments_info"]):
            assert info.category_ids[int(t.labels[k])] == s["category_id"]
            assert bool(t.is_crowd[k]) == bool(s["iscrowd"])
            assert ((t.segments.numpy() == k) == (ids == s["id"])).all()
        assert max(t.valid_size) == 128


def test_exif_orientation_is_ignored(tree):
    """COCO annotations refer to the stored pixels: an EXIF rotation tag must not be applied."""
    pan = _json(tree)
    k = next(i for i, im in enumerate(pan["images"]) if im["height"] != im["width"])
    im = pan["images"][k]
    p = tree / "val2017" / im["file_name"]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.open(p).save(p, quality=95, exif=exif)
    assert Image.open(p).getexif().get(0x0112) == 6
    ds = CocoPanopticDataset(tree, "val", image_size=64)
    raw = ds.load_raw(k)
    assert raw["image"].shape[:2] == (im["height"], im["width"]) == raw["segments"].shape
