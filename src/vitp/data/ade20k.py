"""ADE20K (SceneParsing 150) in its official layout: semantic, and panoptic / instance from the
files Mask2Former's preparation writes (``scripts/prepare_ade20k.py`` writes the same)::

    root/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg
    root/annotations/{training,validation}/ADE_*.png      0 = ignore, 1..150 = class
    root/ade20k_panoptic_{train,val}.json + root/ade20k_panoptic_{train,val}/*.png   (COCO panoptic)
    root/ade20k_instance_{train,val}.json                                            (COCO instances)

``root`` is the ``ADEChallengeData2016`` directory. Semantic classes are contiguous 0..149 with
``category_ids`` 1..150 (the annotation values, so exported semantic PNGs read like the
annotations); the panoptic / instance JSONs bring their own categories (Mask2Former's: ids 0..149,
the 100 instance classes are the things).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from vitp.data.coco import CocoPanopticDataset
from vitp.data.datamodule import SegmentationDataModule, Stage
from vitp.data.io import DatasetError, DatasetFileNotFoundError
from vitp.data.labelmaps import LabelMapDataset, Record, check_values, class_segments, load_label_png
from vitp.structures import DatasetInfo

SPLIT_DIRS = {"train": "training", "val": "validation"}

ADE20K_CLASS_NAMES: tuple[str, ...] = tuple((
    "wall|building|sky|floor|tree|ceiling|road, route|bed|window|grass|cabinet|"
    "sidewalk, pavement|person|earth, ground|door|table|mountain, mount|plant|curtain|chair|car|"
    "water|painting, picture|sofa|shelf|house|sea|mirror|rug|field|armchair|seat|fence|desk|"
    "rock, stone|wardrobe, closet, press|lamp|tub|rail|cushion|base, pedestal, stand|box|"
    "column, pillar|signboard, sign|chest of drawers, chest, bureau, dresser|counter|sand|sink|"
    "skyscraper|fireplace|refrigerator, icebox|grandstand, covered stand|path|stairs|runway|"
    "case, display case, showcase, vitrine|pool table, billiard table, snooker table|pillow|"
    "screen door, screen|stairway, staircase|river|bridge, span|bookcase|blind, screen|"
    "coffee table|toilet, can, commode, crapper, pot, potty, stool, throne|flower|book|hill|"
    "bench|countertop|stove|palm, palm tree|kitchen island|computer|swivel chair|boat|bar|"
    "arcade machine|hovel, hut, hutch, shack, shanty|bus|towel|light|truck|tower|chandelier|"
    "awning, sunshade, sunblind|street lamp|booth|tv|plane|dirt track|clothes|pole|"
    "land, ground, soil|bannister, banister, balustrade, balusters, handrail|"
    "escalator, moving staircase, moving stairway|ottoman, pouf, pouffe, puff, hassock|bottle|"
    "buffet, counter, sideboard|poster, posting, placard, notice, bill, card|stage|van|ship|"
    "fountain|conveyer belt, conveyor belt, conveyer, conveyor, transporter|canopy|"
    "washer, automatic washer, washing machine|plaything, toy|pool|stool|barrel, cask|"
    "basket, handbasket|falls|tent|bag|minibike, motorbike|cradle|oven|ball|food, solid food|"
    "step, stair|tank, storage tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|"
    "screen|blanket, cover|sculpture|hood, exhaust hood|sconce|vase|traffic light|tray|trash can|"
    "fan|pier|crt screen|plate|monitor|bulletin board|shower|radiator|glass, drinking glass|"
    "clock|flag"
).split("|"))
"""The 150 SceneParsing class names (``objectInfo150``), annotation value ``k + 1`` = class ``k``."""

INSTANCE_TO_SEMANTIC: tuple[int, ...] = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43, 44,
    45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81,
    82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113,
    116, 117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139,
    140, 143, 144, 145, 147, 148, 149, 150,
)
"""ADE20K instance-challenge class ``i`` (1..100) -> SceneParsing annotation value (1..150), as in
the instance download's ``categoryMapping.txt``; these 100 classes are the things."""


def ade20k_semantic_info() -> DatasetInfo:
    """The 150 classes, ``category_ids`` 1..150, things = the 100 instance-challenge classes."""
    things = set(INSTANCE_TO_SEMANTIC)
    return DatasetInfo(class_names=ADE20K_CLASS_NAMES, category_ids=tuple(range(1, 151)),
                       is_thing=tuple(k + 1 in things for k in range(150)))


def split_dir(split: str) -> str:
    """``train`` / ``val`` (or the directory names themselves) -> ``training`` / ``validation``."""
    return SPLIT_DIRS.get(split, split)


def check_root(root: Path) -> None:
    if not (root / "images").is_dir():
        raise DatasetFileNotFoundError(
            f"{root / 'images'}: not found; root must be the ADEChallengeData2016 directory holding "
            "images/ and annotations/")


class ADE20KSemanticDataset(LabelMapDataset):
    """One split of ADEChallengeData2016 as semantic segmentation (one segment per class present).

    Args:
        root: the ``ADEChallengeData2016`` directory.
        split: ``train`` / ``val`` (directories ``training`` / ``validation``).
        train: training augmentation; otherwise eval resize only.
        max_samples: keep only the first n images (sorted by name).
        kwargs: ``on_bad_sample`` and the transform arguments of ``LabelMapDataset`` (image_size,
            scale_range, ...). With ``on_bad_sample="skip"`` an image without annotation PNG, or an
            annotation without image, is left out and listed in ``skipped_records``.
    """

    def __init__(self, root: str | Path, split: str, train: bool = False, max_samples: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(train=train, **kwargs)
        self.root = Path(root)
        check_root(self.root)
        d = split_dir(split)
        pairs = self.pair(self.root / "images" / d, ".jpg", self.root / "annotations" / d, ".png")
        self.records = [Record(image=i, labels=(lb,), image_id=stem) for i, lb, stem in pairs[:max_samples]]

    def decode(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = load_label_png(record.labels[0], "annotation PNG")
        check_values(np.unique(values), np.arange(151), record.labels[0], "class")
        segments, labels = class_segments(values - 1)  # 0 (ignore) -> -1
        return segments, labels, np.zeros(len(labels), dtype=bool)


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K: ``semantic`` (150 classes), ``panoptic`` (prepared panoptic JSON + PNGs) or
    ``instance`` (prepared instance JSON, 100 thing classes).

    Loaders, augmentation, points and ``path`` (predict images): the arguments of
    ``SegmentationDataModule``.

    Args:
        root: dataset root with ``images/`` and ``annotations/`` (the ``ADEChallengeData2016``
            directory; panoptic/instance also need the files of ``scripts/prepare_ade20k.py``).
        task: which ground truth to read: ``semantic``, ``panoptic`` or ``instance``.
        train_split: split used by ``fit`` for training (``train`` / ``val``).
        val_split: split used for validation.
        test_split: split used by ``test`` (ADE20K's test images have no public labels).
        max_train_samples: use only the first n training images.
        max_eval_samples: use only the first n val/test images.
    """

    def __init__(
        self,
        root: str = "data/ADEChallengeData2016",
        task: Literal["semantic", "panoptic", "instance"] = "semantic",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task not in ("semantic", "panoptic", "instance"):
            raise ValueError(f"task must be semantic, panoptic or instance, got {task!r}")
        self.root, self.task = Path(root), task
        self.splits: dict[str, str] = {"train": train_split, "val": val_split, "test": test_split}
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples

    def json_path(self, split: str) -> Path:
        return self.root / f"ade20k_{self.task}_{split}.json"

    @cached_property
    def dataset_info(self) -> DatasetInfo:
        if self.task == "semantic":
            return ade20k_semantic_info()
        from vitp.data.coco_format import read_categories

        check_root(self.root)
        for split in (self.splits["val"], self.splits["train"]):
            if self.json_path(split).is_file():
                return read_categories(self.json_path(split))
        raise DatasetFileNotFoundError(f"{self.json_path(self.splits['val'])}: not found; run "
                                       "scripts/prepare_ade20k.py ROOT to write the panoptic/instance files")

    def build_dataset(self, stage: Stage) -> Dataset:
        train, split = stage == "train", self.splits[stage]
        common = dict(train=train, image_size=self.image_size, scale_range=self.scale_range,
                      hflip_prob=self.hflip_prob, mean=self.mean, std=self.std,
                      max_samples=self.max_train_samples if train else self.max_eval_samples)
        if self.task == "semantic":
            return ADE20KSemanticDataset(self.root, split, on_bad_sample=self.on_bad_sample, **common)
        check_root(self.root)
        image_dir = self.root / "images" / split_dir(split)
        if self.task == "panoptic":
            return CocoPanopticDataset(self.root, split, json_path=self.json_path(split), image_dir=image_dir,
                                       png_dir=self.root / f"ade20k_panoptic_{split}", on_bad_sample=self.on_bad_sample,
                                       **common)
        from vitp.data.coco_format import CocoInstancesDataset

        return CocoInstancesDataset(image_dir, self.json_path(split), **common)


__all__ = ["ADE20KDataModule", "ADE20KSemanticDataset", "DatasetError", "ade20k_semantic_info"]
