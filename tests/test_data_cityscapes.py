"""Cityscapes in its official layout, on a tiny generated copy (real file names, label-id and
instance-id encodings): targets, coarse point supervision, errors, parity of vitp's mIoU and PQ with
``cityscapesscripts``' own evaluation on the same predictions, and the Cityscapes configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cityscapesscripts.helpers.labels import id2label

from vitp.data.cityscapes import CityscapesDataModule, CityscapesDataset, cityscapes_dataset_info
from vitp.data.collate import PanopticCollate
from vitp.data.io import DatasetError, DatasetFileNotFoundError
from vitp.points import ClassBalancedSampler

H, W = 32, 64
CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"], "train_extra": ["augsburg"]}


def _instance_map(rng: np.random.Generator) -> np.ndarray:
    """An ``instanceIds`` map: stuff bands, void (unlabeled, ego vehicle), cars and persons with
    instance ids, a crowd of cars and of bicycles (ids < 1000), an ignored caravan instance."""
    inst = np.full((H, W), 7, dtype=np.int64)  # road
    inst[:6] = 23  # sky
    inst[6:12] = 11  # building
    inst[12:14, :10] = 0  # unlabeled
    inst[12:14, 10:20] = 1  # ego vehicle
    inst[12:14, 20:] = 21  # vegetation
    k = {24: 0, 26: 0}
    for _ in range(4):
        cls = int(rng.choice([24, 26]))
        k[cls] += 1
        y, x = int(rng.integers(14, H - 6)), int(rng.integers(0, W - 8))
        inst[y:y + int(rng.integers(3, 6)), x:x + int(rng.integers(4, 8))] = cls * 1000 + k[cls]
    inst[H - 3:, :6] = 26  # a crowd of cars (no instance id)
    inst[H - 3:, 6:10] = 33  # a crowd of bicycles
    inst[H - 3:, 10:14] = 29001  # caravan: has instances but is ignored in evaluation
    return inst


def write_cityscapes(root: Path, seed: int = 0, per_city: int = 2) -> Path:
    """A tiny Cityscapes tree (fine train/val, coarse train_extra) at ``root``."""
    rng = np.random.default_rng(seed)
    for split, cities in CITIES.items():
        for city in cities:
            for n in range(per_city):
                stem = f"{city}_{n:06d}_{19 + n:06d}"
                img_dir = root / "leftImg8bit" / split / city
                img_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
                inst = _instance_map(rng)
                label_ids = np.where(inst >= 1000, inst // 1000, inst)
                gt = "gtCoarse" if split == "train_extra" else "gtFine"
                gt_dir = root / gt / split / city
                gt_dir.mkdir(parents=True, exist_ok=True)
                if gt == "gtCoarse":  # coarse polygons: a few labelled blobs, the rest unlabeled
                    label_ids = np.where(rng.random((H, W)) < 0.5, label_ids, 0)
                    label_ids[:, :4] = 0
                Image.fromarray(label_ids.astype(np.uint8)).save(gt_dir / f"{stem}_{gt}_labelIds.png")
                Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{stem}_{gt}_instanceIds.png")
    return root


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes") / "cityscapes")


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_label_table_is_cityscapesscripts():
    info = cityscapes_dataset_info()
    assert info.num_classes == 19 and info.category_ids[0] == 7 and info.class_names[-1] == "bicycle"
    for k, cid in enumerate(info.category_ids):
        assert id2label[cid].trainId == k and info.is_thing[k] == id2label[cid].hasInstances
    assert sum(info.is_thing) == 8


def test_panoptic_targets_follow_instance_ids(cs_root: Path):
    ds = CityscapesDataset(cs_root, "val", image_size=32)
    assert len(ds) == 4 and ds.records[0].image_id == "frankfurt_000000_000019"
    for i in range(len(ds)):
        sample = ds[i]
        inst = _read(ds.records[i].labels[1])
        assert sample.orig_size == (H, W) and tuple(sample.segments.shape) == (H, W)  # full-resolution GT
        assert tuple(sample.image.shape[-2:]) == (16, 32)  # input resized to the long side
        seen = 0
        for v in np.unique(inst):
            label = id2label[int(v // 1000 if v >= 1000 else v)]
            region = torch.from_numpy(inst == v)
            if label.ignoreInEval:  # void: unlabeled, ego vehicle, caravan
                assert (sample.segments[region] == -1).all(), v
                continue
            idx = int(sample.segments[region][0])
            assert (sample.segments[region] == idx).all() and int((sample.segments == idx).sum()) == int(region.sum())
            assert int(sample.labels[idx]) == label.trainId
            assert bool(sample.is_crowd[idx]) == (v < 1000 and label.hasInstances), v
            seen += 1
        assert seen == len(sample.labels)
        assert bool(sample.is_crowd.any())  # the car and bicycle crowds


def test_semantic_mode_one_segment_per_class(cs_root: Path):
    ds = CityscapesDataset(cs_root, "val", mode="semantic", image_size=64)
    sample = ds[1]
    ids = _read(ds.records[1].labels[0])
    train_ids = np.vectorize(lambda v: id2label[int(v)].trainId)(ids)
    expected = np.where((train_ids >= 0) & (train_ids < 255), train_ids, -1)
    lut = torch.cat([sample.labels, torch.tensor([-1])])
    assert torch.equal(lut[sample.segments], torch.from_numpy(expected))
    assert len(set(sample.labels.tolist())) == len(sample.labels) and not sample.is_crowd.any()


def test_coarse_train_extra_supervises_points_only_inside_polygons(cs_root: Path):
    dm = CityscapesDataModule(root=str(cs_root), coarse_splits=["train_extra"], num_workers=0, image_size=64,
                              batch_size=2, point_sampler=ClassBalancedSampler(num_points=50))
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 + 2
    coarse = CityscapesDataset(cs_root, "train_extra", annotation="gtCoarse", mode="semantic", image_size=64,
                               point_source="coarse")
    samples = [coarse[0], coarse[1]]
    batch = dm.collate(dm.point_sampler, seed=0)(samples)
    info = dm.dataset_info
    for i, rec in enumerate(coarse.records):
        ids = _read(rec.labels[0])
        ok = batch.point_labels[i] >= 0
        assert int(ok.sum()) == 50
        rows = ((batch.points[i, ok, 0] + 1) * H / 2 - 0.5).round().long()
        cols = ((batch.points[i, ok, 1] + 1) * W / 2 - 0.5).round().long()
        at = torch.from_numpy(ids)[rows, cols]
        expected = torch.tensor([info.category_ids[c] for c in batch.point_labels[i, ok].tolist()])
        assert torch.equal(at, expected)  # every point on a coarse polygon of its own class
    with pytest.raises(ValueError, match="point_source 'coarse'"):
        PanopticCollate(point_sampler=ClassBalancedSampler(10))(samples)
    with pytest.raises(ValueError, match="point_sampler"):
        CityscapesDataModule(root=str(cs_root), coarse_splits=["train_extra"])


def test_errors_name_the_file_and_problem(cs_root: Path, tmp_path: Path):
    with pytest.raises(DatasetFileNotFoundError, match="leftImg8bit/ and gtFine"):
        CityscapesDataset(tmp_path, "val")
    with pytest.raises(DatasetFileNotFoundError, match=r"leftImg8bit/test: image directory not found"):
        CityscapesDataset(cs_root, "test")
    root = tmp_path / "cs"
    shutil.copytree(cs_root, root)
    labels = sorted((root / "gtFine" / "val").rglob("*_labelIds.png"))
    labels[0].unlink()
    with pytest.raises(DatasetError, match=r"4 images .* 3 label files.*frankfurt_000000_000019_leftImg8bit"):
        CityscapesDataset(root, "val")
    bad = labels[1]
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(bad)
    (root / "gtFine/val/frankfurt" / labels[0].name).write_bytes(bad.read_bytes())
    ds = CityscapesDataset(root, "val", mode="semantic")
    with pytest.raises(DatasetError, match=rf"{bad.name}: label id value\(s\) \[40\] are outside the label table"):
        ds[1]
    inst = bad.with_name(bad.name.replace("labelIds", "instanceIds"))
    Image.fromarray(np.full((H, W), 45001, np.uint16)).save(inst)
    with pytest.raises(DatasetError, match=rf"{inst.name}: .*\[45\] are outside the label table"):
        CityscapesDataset(root, "val")[1]


def _perturbed_prediction(inst: np.ndarray, rng: np.random.Generator):
    """A panoptic and a semantic prediction made from a shifted, partly relabelled copy of the ground
    truth, with extra segments: matches, misses, false positives, void and crowd overlaps."""
    from vitp.data.cityscapes import ID_TO_CLASS
    from vitp.structures import PanopticPrediction

    pred = np.roll(inst, shift=(0, 1), axis=(0, 1))
    for n in range(2):
        y, x = int(rng.integers(0, H - 4)), int(rng.integers(0, W - 6))
        cls = int(rng.choice([7, 11, 21, 24, 26, 33]))
        pred[y:y + 4, x:x + 6] = cls * 1000 + 900 + n if id2label[cls].hasInstances else cls
    label_id = np.where(pred >= 1000, pred // 1000, pred)
    uniq, inverse = np.unique(pred, return_inverse=True)
    cls = ID_TO_CLASS[np.where(uniq >= 1000, uniq // 1000, uniq)]
    keep = cls >= 0
    lut = np.where(keep, np.cumsum(keep) - 1, -1)
    segments = torch.from_numpy(lut[inverse.reshape(pred.shape)])
    labels = torch.from_numpy(cls[keep])
    pan = PanopticPrediction(segments=segments, labels=labels, scores=torch.ones(len(labels)))
    semantic = torch.from_numpy(ID_TO_CLASS[label_id])
    semantic[semantic < 0] = torch.from_numpy(rng.integers(0, 19, int((semantic < 0).sum())))
    return pan, semantic


def test_miou_and_pq_equal_cityscapesscripts_on_the_same_predictions(cs_root: Path, tmp_path: Path):
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as pan_eval
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as sem_eval
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    from vitp.export import PredictionExporter
    from vitp.metrics import MeanIoU, PanopticQuality
    from vitp.structures import Prediction, Target

    rng = np.random.default_rng(3)
    ds = CityscapesDataset(cs_root, "val", image_size=64)
    info = ds_info = cityscapes_dataset_info()
    miou, pq = MeanIoU(ds_info), PanopticQuality(ds_info)
    exporter = PredictionExporter(tmp_path / "pred", info)
    for i in range(len(ds)):
        s = ds[i]
        target = Target(masks=s.masks, labels=s.labels, is_crowd=s.is_crowd, segments=s.segments,
                        image_id=s.image_id, file_name=s.file_name, orig_size=s.orig_size, valid_size=(H, W))
        pan, semantic = _perturbed_prediction(_read(ds.records[i].labels[1]), rng)
        miou.update([semantic], [target])
        pq.update([pan], [target])
        exporter.write(Prediction(semantic=semantic, panoptic=pan), target)
    exporter.finalize({})
    ours = {**{k: float(v) for k, v in miou.compute().items()}, **{k: float(v) for k, v in pq.compute().items()}}

    # official pixel-level evaluation of the exported labelIds PNGs against gtFine/val
    gt_files = sorted(str(p) for p in (cs_root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    pred_files = [str(tmp_path / "pred" / "semantic" / (Path(f).name.replace("gtFine_labelIds", "leftImg8bit")))
                  for f in gt_files]
    sem_eval.args.evalInstLevelScore, sem_eval.args.JSONOutput, sem_eval.args.quiet = False, False, True
    official_sem = sem_eval.evaluateImgLists(pred_files, gt_files, sem_eval.args)
    per_class = miou.compute_per_class()["iou"]
    for k, cid in enumerate(info.category_ids):
        theirs = official_sem["classScores"][id2label[cid].name]
        assert (np.isnan(theirs) and np.isnan(float(per_class[k]))) or float(per_class[k]) == pytest.approx(100 * theirs)
    assert ours["miou"] == pytest.approx(100 * official_sem["averageScoreClasses"], abs=1e-9)

    # official panoptic evaluation: ground truth converted by cityscapesscripts from instanceIds
    convert2panoptic(str(cs_root / "gtFine"), str(tmp_path), useTrainId=False, setNames=["val"])
    official = pan_eval.evaluatePanoptic(
        str(tmp_path / "cityscapes_panoptic_val.json"), str(tmp_path / "cityscapes_panoptic_val"),
        str(tmp_path / "pred" / "panoptic.json"), str(tmp_path / "pred" / "panoptic"), str(tmp_path / "pq.json"))
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            assert ours[key + suffix] == pytest.approx(100 * official[group][key], abs=1e-9), (group, key)
    assert 0 < ours["pq_th"] < 95 and 20 < ours["pq"] < 95 and 20 < ours["miou"] < 95  # hits and errors


def test_training_batches_deterministic_under_a_seed_and_padding_is_ignore(cs_root: Path):
    import lightning as L

    def first_batch():
        L.seed_everything(0)
        dm = CityscapesDataModule(root=str(cs_root), coarse_splits=["train_extra"], num_workers=0, image_size=48,
                                  batch_size=6, scale_range=(0.5, 1.5), point_sampler=ClassBalancedSampler(20))
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b = first_batch(), first_batch()
    assert torch.equal(a.images, b.images) and torch.equal(a.points, b.points)
    assert torch.equal(a.point_labels, b.point_labels)
    assert any(t.valid_size != tuple(a.images.shape[-2:]) for t in a.targets)  # some images were padded
    for t in a.targets:  # padding is covered by no mask: ignored, never a class
        h, w = t.valid_size
        assert not t.masks[:, h:].any() and not t.masks[:, :, w:].any()
