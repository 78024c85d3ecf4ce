"""Cityscapes in its official layout: semantic, panoptic and instance targets, coarse labels.

Reads the files as downloaded (``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip``,
optionally ``gtCoarse.zip`` and ``leftImg8bit_trainextra.zip``)::

    root/leftImg8bit/{train,val,test,train_extra}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    root/gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_{labelIds,instanceIds}.png
    root/gtCoarse/{train,train_extra,val}/CITY/CITY_SEQ_FRAME_gtCoarse_labelIds.png

The label table is ``cityscapesscripts.helpers.labels``: the 19 classes with a train id, in train-id
order (class ``k`` = train id ``k``; ``DatasetInfo.category_ids`` are the label ids, so exported
semantic PNGs are ``labelIds`` images the official evaluation reads). Every other label id is
ignored (void). Panoptic targets follow ``cityscapesscripts``' ``createPanopticImgs``: an
``instanceIds`` value ``v >= 1000`` is instance ``v % 1000`` of label ``v // 1000``; a value
``v < 1000`` is label ``v`` (stuff, or a crowd region for a class with instances). Ground truth stays
at the full 1024x2048 resolution, so metrics are computed there whatever ``image_size`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from cityscapesscripts.helpers.labels import labels as CS_LABELS
from torch.utils.data import ConcatDataset, Dataset

from vitp.data.datamodule import SegmentationDataModule, Stage
from vitp.data.io import DatasetError, DatasetFileNotFoundError
from vitp.data.labelmaps import LabelMapDataset, Record, check_values, class_segments, load_label_png
from vitp.points import ClassBalancedSampler
from vitp.structures import DatasetInfo

_EVAL_LABELS = sorted((lb for lb in CS_LABELS if not lb.ignoreInEval), key=lambda lb: lb.trainId)
_MAX_ID = max(lb.id for lb in CS_LABELS)
VALID_LABEL_IDS = np.array(sorted(lb.id for lb in CS_LABELS if lb.id >= 0), dtype=np.int64)
"""Label ids that may occur in a ``*_labelIds.png`` (0..33)."""
ID_TO_CLASS = np.full(_MAX_ID + 1, -1, dtype=np.int64)
"""Label id -> contiguous class (= train id), -1 for ignored labels."""
HAS_INSTANCES = np.zeros(_MAX_ID + 1, dtype=bool)
for _k, _lb in enumerate(_EVAL_LABELS):
    ID_TO_CLASS[_lb.id] = _k
for _lb in CS_LABELS:
    if _lb.id >= 0:
        HAS_INSTANCES[_lb.id] = _lb.hasInstances


def cityscapes_dataset_info() -> DatasetInfo:
    """The 19 evaluated Cityscapes classes (train-id order; category ids = label ids)."""
    return DatasetInfo(
        class_names=tuple(lb.name for lb in _EVAL_LABELS),
        category_ids=tuple(int(lb.id) for lb in _EVAL_LABELS),
        is_thing=tuple(bool(lb.hasInstances) for lb in _EVAL_LABELS),
    )


class CityscapesDataset(LabelMapDataset):
    """One split of Cityscapes (items: :class:`vitp.data.collate.Sample`).

    Args:
        root: dataset root holding ``leftImg8bit/`` and ``gtFine/`` (``gtCoarse/``).
        split: ``train``, ``val``, ``test`` or ``train_extra`` (coarse only).
        annotation: ``gtFine`` or ``gtCoarse``.
        mode: ``panoptic``: one segment per instance (from ``instanceIds``) and per stuff class,
            thing pixels without an instance id are crowd; ``semantic``: one segment per class
            (from ``labelIds``), no crowd.
        train: training augmentation (see ``LabelMapDataset``); otherwise eval resize only.
        max_samples: keep only the first n images (sorted by city and name).
        kwargs: ``on_bad_sample`` and the transform arguments of ``LabelMapDataset`` (image_size,
            scale_range, ...). With ``on_bad_sample="skip"`` an image without its label file (or
            ``*_instanceIds.png`` in panoptic mode), or a label file without image, is left out and
            listed in ``skipped_records``.
    """

    def __init__(self, root: str | Path, split: str, annotation: Literal["gtFine", "gtCoarse"] = "gtFine",
                 mode: Literal["panoptic", "semantic"] = "panoptic", train: bool = False,
                 max_samples: int | None = None, **kwargs: Any) -> None:
        super().__init__(train=train, **kwargs)
        if mode not in ("panoptic", "semantic"):
            raise ValueError(f"mode must be 'panoptic' or 'semantic', got {mode!r}")
        self.root, self.split, self.annotation, self.mode = Path(root), split, annotation, mode
        if not (self.root / "leftImg8bit").is_dir():
            raise DatasetFileNotFoundError(
                f"{self.root / 'leftImg8bit'}: not found; root must be the Cityscapes directory holding "
                "leftImg8bit/ and gtFine/")
        pairs = self.pair(self.root / "leftImg8bit" / split, "_leftImg8bit.png",
                          self.root / annotation / split, f"_{annotation}_labelIds.png", recursive=True)
        for image, label, stem in pairs:
            if max_samples is not None and len(self.records) >= max_samples:
                break
            files: tuple[Path, ...] = (label,)
            if mode == "panoptic":
                inst = label.with_name(label.name.replace("_labelIds.png", "_instanceIds.png"))
                if not inst.is_file():
                    problem = (f"{inst}: instance-id file of {image.name} not found "
                               "(panoptic/instance targets need *_instanceIds.png)")
                    if self.on_bad_sample != "skip":
                        raise DatasetFileNotFoundError(
                            problem + "; set data.init_args.on_bad_sample=skip to leave such images out")
                    self.skipped_records.append(problem)
                    continue
                files = (label, inst)
            self.records.append(Record(image=image, labels=files, image_id=stem.replace("_leftImg8bit", "")))
        if not self.records and max_samples != 0:  # every pair lacked its instance-id file
            raise DatasetError(f"{self.root / 'leftImg8bit' / split}: no usable image, all were skipped: "
                               f"{self.skipped_records[:3]}")

    def decode(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.mode == "semantic":
            ids = load_label_png(record.labels[0], "label-id PNG")
            uniq = np.unique(ids)
            check_values(uniq, VALID_LABEL_IDS, record.labels[0], "label id")
            segments, labels = class_segments(ID_TO_CLASS[ids])
            return segments, labels, np.zeros(len(labels), dtype=bool)
        path = record.labels[1]
        inst = load_label_png(path, "instance-id PNG")
        uniq, inverse = np.unique(inst, return_inverse=True)
        label_id = np.where(uniq >= 1000, uniq // 1000, uniq)
        check_values(label_id, VALID_LABEL_IDS, path, "label id (instanceIds // 1000 or < 1000)")
        cls = ID_TO_CLASS[label_id]
        keep = cls >= 0
        lut = np.where(keep, np.cumsum(keep) - 1, -1)
        crowd = (uniq < 1000) & HAS_INSTANCES[label_id]
        return lut[inverse.reshape(inst.shape)], cls[keep], crowd[keep]


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes (19 classes, label ids in exports), fine labels, optional coarse point supervision.

    Loaders, augmentation, points and ``path`` (predict images): the arguments of
    ``SegmentationDataModule``.

    Args:
        root: dataset root with ``leftImg8bit/`` and ``gtFine/`` (``gtCoarse/`` for coarse labels).
        mode: ``panoptic`` (instances, stuff, crowd: panoptic, instance and semantic metrics) or
            ``semantic`` (one segment per class from ``labelIds``).
        train_split: split used by ``fit`` for training.
        val_split: split used for validation.
        test_split: split used by ``test`` (``test`` has no public labels: use ``val``).
        coarse_splits: ``gtCoarse`` splits added to training as point supervision only, e.g.
            ``[train_extra]``: points are drawn class-balanced inside the coarse polygons
            (``coarse_num_points`` per image). Needs ``point_sampler``; keep the proposer frozen.
        coarse_num_points: points per coarse image (None: the ``point_sampler``'s ``num_points``).
        max_train_samples: use only the first n fine training images.
        max_eval_samples: use only the first n val/test images.
        max_coarse_samples: use only the first n images of each coarse split.
        eval_image_size: long side of val/test inputs (2048: the full 1024x2048 frame;
            None: ``image_size``). Metrics always compare at the full resolution.
    """

    def __init__(
        self,
        root: str = "data/cityscapes",
        mode: Literal["panoptic", "semantic"] = "panoptic",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        coarse_splits: list[str] | None = None,
        coarse_num_points: int | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_coarse_samples: int | None = None,
        eval_image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.mode = mode
        self.splits: dict[str, str] = {"train": train_split, "val": val_split, "test": test_split}
        self.coarse_splits = list(coarse_splits or [])
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.max_coarse_samples = max_coarse_samples
        self.eval_image_size = eval_image_size or self.image_size
        if self.coarse_splits:
            if self.point_sampler is None:
                raise ValueError("coarse_splits supervise only the point classifier: set data.point_sampler")
            n = coarse_num_points or self.point_sampler.num_points
            self.source_samplers["coarse"] = ClassBalancedSampler(num_points=n)

    @property
    def dataset_info(self) -> DatasetInfo:
        return cityscapes_dataset_info()

    def _dataset(self, split: str, train: bool, **kwargs: Any) -> CityscapesDataset:
        return CityscapesDataset(
            self.root, split, train=train, image_size=self.image_size if train else self.eval_image_size,
            scale_range=self.scale_range, hflip_prob=self.hflip_prob, mean=self.mean, std=self.std,
            on_bad_sample=self.on_bad_sample, **kwargs)

    def build_dataset(self, stage: Stage) -> Dataset:
        train = stage == "train"
        fine = self._dataset(self.splits[stage], train, mode=self.mode,
                             max_samples=self.max_train_samples if train else self.max_eval_samples)
        if not train or not self.coarse_splits:
            return fine
        coarse = [self._dataset(s, True, annotation="gtCoarse", mode="semantic", point_source="coarse",
                                max_samples=self.max_coarse_samples) for s in self.coarse_splits]
        return ConcatDataset([fine, *coarse])


__all__ = ["CityscapesDataModule", "CityscapesDataset", "DatasetError", "cityscapes_dataset_info"]
