"""ADE20K in its official layout (ADEChallengeData2016 + instance-challenge PNGs), on a tiny
generated copy: semantic targets, scripts/prepare_ade20k.py -> panoptic / instance targets, errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROJECT_ROOT
from vitp.data.ade20k import ADE20K_CLASS_NAMES, ADE20KDataModule, ADE20KSemanticDataset, ade20k_semantic_info
from vitp.data.io import DatasetError, DatasetFileNotFoundError

H, W = 40, 56
THINGS = {8: 1, 13: 4, 21: 9}  # semantic value -> instance-challenge class (bed, person, car)


def write_ade20k(root: Path, seed: int = 0, n: int = 3) -> Path:
    """``root`` = ADEChallengeData2016 with ``n`` images per split, semantic and instance PNGs."""
    rng = np.random.default_rng(seed)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for d in ("images", "annotations", "annotations_instance"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            sem = np.full((H, W), 1, np.uint8)  # wall
            sem[:8] = 3  # sky
            sem[30:] = 4  # floor
            sem[30:, :6] = 0  # ignore
            ins = np.zeros((H, W, 3), np.uint8)
            for number in range(1, 4):
                value = int(rng.choice(list(THINGS)))
                y, x = int(rng.integers(8, 30)), int(rng.integers(0, W - 12))
                sem[y:y + 8, x:x + 12] = value
                ins[y:y + 8, x:x + 12] = (THINGS[value], number, 0)
            sem[34:, 50:] = 13  # a person without instance annotation: void in panoptic
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / split / f"{stem}.jpg")
            Image.fromarray(sem).save(root / "annotations" / split / f"{stem}.png")
            Image.fromarray(ins).save(root / "annotations_instance" / split / f"{stem}.png")
    return root


def prepare_script():
    spec = importlib.util.spec_from_file_location("prepare_ade20k", PROJECT_ROOT / "scripts" / "prepare_ade20k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_ade20k(tmp_path_factory.mktemp("ade") / "ADEChallengeData2016")
    prepare_script().main([str(root)])
    return root


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_label_space():
    info = ade20k_semantic_info()
    assert info.num_classes == 150 == len(set(ADE20K_CLASS_NAMES))
    assert sum(info.is_thing) == 100 and info.is_thing[7] and not info.is_thing[0]  # bed thing, wall stuff
    assert info.class_names[:3] == ("wall", "building", "sky") and info.category_ids[-1] == 150


def test_semantic_targets(ade_root: Path):
    ds = ADE20KSemanticDataset(ade_root, "val", image_size=28)
    assert len(ds) == 3 and ds.records[0].image_id == "ADE_val_00000001"
    for i in range(len(ds)):
        s = ds[i]
        sem = _read(ds.records[i].labels[0])
        lut = torch.cat([s.labels, torch.tensor([-1])])
        assert torch.equal(lut[s.segments], torch.from_numpy(sem - 1))  # 0 -> ignore (-1), k -> class k-1
        assert s.orig_size == (H, W) and tuple(s.image.shape[-2:]) == (20, 28) and not s.is_crowd.any()


def test_prepare_then_panoptic_and_instance_targets(ade_root: Path):
    pan_json = json.loads((ade_root / "ade20k_panoptic_val.json").read_text())
    cats = pan_json["categories"]
    assert [c["id"] for c in cats] == list(range(150)) and sum(c["isthing"] for c in cats) == 100
    ins_json = json.loads((ade_root / "ade20k_instance_val.json").read_text())
    assert len(ins_json["categories"]) == 100 and len(ins_json["annotations"]) == 9

    dm = ADE20KDataModule(root=str(ade_root), task="panoptic", image_size=56, num_workers=0)
    dm.setup("test")
    for i in range(3):
        s = dm.test_dataset[i]
        sem = _read(ade_root / "annotations" / "validation" / f"ADE_val_{i + 1:08d}.png")
        ins = _read(ade_root / "annotations_instance" / "validation" / f"ADE_val_{i + 1:08d}.png")
        cls = dm.dataset_info.category_ids
        for number in np.unique(ins[..., 1])[1:]:  # every instance is one segment of its class
            region = torch.from_numpy(ins[..., 1] == number)
            idx = int(s.segments[region][0])
            assert int((s.segments == idx).sum()) == int(region.sum())
            assert cls[int(s.labels[idx])] + 1 == int(sem[region.numpy()][0])
        stuff = (sem > 0) & (ins[..., 1] == 0) & ~np.isin(sem, list(THINGS))
        lut = torch.tensor([cls[k] + 1 for k in s.labels.tolist()] + [0])
        assert torch.equal(lut[s.segments][torch.from_numpy(stuff)], torch.from_numpy(sem[stuff]))
        void = (sem == 0) | ((ins[..., 1] == 0) & np.isin(sem, list(THINGS)))  # unannotated person -> void
        assert (s.segments[torch.from_numpy(void)] == -1).all() and void[34:, 50:].all()

    dm = ADE20KDataModule(root=str(ade_root), task="instance", image_size=56, num_workers=0)
    dm.setup("test")
    assert dm.dataset_info.num_classes == 100 and all(dm.dataset_info.is_thing)
    s = dm.test_dataset[0]
    ins = _read(ade_root / "annotations_instance" / "validation" / "ADE_val_00000001.png")
    assert len(s.labels) == 3 and torch.equal(s.segments >= 0, torch.from_numpy(ins[..., 1] > 0))


def test_errors_name_the_file_and_problem(ade_root: Path, tmp_path: Path):
    with pytest.raises(DatasetFileNotFoundError, match="ADEChallengeData2016 directory"):
        ADE20KSemanticDataset(tmp_path, "val")
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, root)
    shutil.rmtree(root / "annotations" / "training")
    with pytest.raises(DatasetFileNotFoundError, match=r"annotations/training: label directory not found"):
        ADE20KSemanticDataset(root, "train")
    (root / "images" / "validation" / "ADE_val_00000004.jpg").write_bytes(
        (root / "images" / "validation" / "ADE_val_00000001.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"4 images .* 3 label files.*ADE_val_00000004.jpg"):
        ADE20KSemanticDataset(root, "val")
    (root / "images" / "validation" / "ADE_val_00000004.jpg").unlink()
    bad = root / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.fromarray(np.full((H, W), 151, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=r"ADE_val_00000002.png: class value\(s\) \[151\] are outside the label table"):
        ADE20KSemanticDataset(root, "val")[1]
    for f in root.glob("ade20k_*.json"):
        f.unlink()
    with pytest.raises(DatasetFileNotFoundError, match="ade20k_panoptic_val.json: not found; run scripts/prepare"):
        ADE20KDataModule(root=str(root), task="panoptic").dataset_info
    with pytest.raises(SystemExit, match="images/training: not found"):
        prepare_script().main([str(tmp_path / "nothing")])
