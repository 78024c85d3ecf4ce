"""COCO 2017 panoptic: dataset, label space and data module.

Reads the official layout unchanged::

    root/{split}2017/*.jpg
    root/annotations/panoptic_{split}2017.json
    root/annotations/panoptic_{split}2017/*.png     (segment id = R + 256 G + 256^2 B, 0 = void)

With ``root=None`` the data module uses vitp's generated synthetic dataset (same layout) under
``data/generated/synthetic_coco`` relative to the working directory, generating it when missing.

Any inconsistency in the data raises :class:`vitp.data.io.DatasetError` naming the file and the
problem; no target is ever silently patched (file reading: ``vitp.data.io``).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vitp.data.collate import Sample
from vitp.data.datamodule import SegmentationDataModule, Stage
from vitp.data.io import DatasetError, DatasetFileNotFoundError, load_coco_json, load_json, load_panoptic_png, load_rgb
from vitp.data.labelmaps import build_sample
from vitp.data.synthetic import ensure_synthetic_dataset
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform
from vitp.structures import DatasetInfo

DEFAULT_SYNTHETIC_ROOT = Path("data") / "generated" / "synthetic_coco"
"""Where the default generated dataset lives, relative to the working directory."""


def dataset_info_from_categories(categories: list[dict[str, Any]], source: str = "") -> DatasetInfo:
    """COCO categories -> :class:`DatasetInfo` (sorted by category id -> contiguous 0..K-1)."""
    try:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        ids = tuple(int(c["id"]) for c in cats)
        names = tuple(str(c["name"]) for c in cats)
        things = tuple(bool(c.get("isthing", 1)) for c in cats)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{source}: malformed 'categories' entry: {e!r}") from e
    if not cats:
        raise DatasetError(f"{source}: no categories")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{source}: duplicate category ids")
    return DatasetInfo(class_names=names, category_ids=ids, is_thing=things)


def panoptic_json_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"panoptic_{split}2017.json"


def read_dataset_info(root: str | os.PathLike, split: str = "val") -> DatasetInfo:
    """Read only the categories of ``root/annotations/panoptic_{split}2017.json``."""
    path = panoptic_json_path(root, split)
    data = load_json(path)
    if "categories" not in data:
        raise DatasetError(f"{path}: missing 'categories'")
    return dataset_info_from_categories(data["categories"], str(path))


# ------------------------------------------------------------------------------------- dataset


class CocoPanopticDataset(Dataset):
    """One split of a COCO-panoptic-layout dataset.

    Items are :class:`vitp.data.collate.Sample` (collate with :class:`PanopticCollate`).

    Args:
        root: dataset root (holding ``{split}2017/`` and ``annotations/``).
        split: split name, e.g. ``"train"`` or ``"val"`` (files ``{split}2017``).
        train: training mode (scale jitter, random crop, flip; segments absent from the crop are
            dropped from masks/labels and ``segments`` maps their pixels to -1). In eval mode all
            segments are kept and ``segments`` is the untouched original ground truth.
        image_size: eval: long side resized to this; train: crop size and scale-jitter centre.
        scale_range: train scale jitter range (multiplies ``image_size``).
        hflip_prob: train horizontal flip probability.
        mean: normalisation mean (RGB, 0..1 units).
        std: normalisation std (RGB, 0..1 units).
        max_samples: keep only the first n images (quick runs).
        json_path: the panoptic JSON, when not at the COCO place (ADE20K, custom layouts).
        image_dir: the image folder, when not at the COCO place.
        png_dir: the panoptic PNG folder, when not at the COCO place.
        on_bad_sample: a record that cannot be used (annotation without ``segments_info``, an image
            without annotation or an annotation without image, unknown category, invalid segment
            id) raises a :class:`DatasetError` naming the JSON and the record (``error``) or is
            left out and listed in ``skipped_records`` (``skip``; the data module warns and counts).
            Duplicate image ids, or a JSON without ``images`` / ``annotations`` / ``categories``,
            always raise: there is no right record to keep.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        train: bool = False,
        image_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        max_samples: int | None = None,
        json_path: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        png_dir: str | os.PathLike | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.train = train
        self.json_path = Path(json_path) if json_path else panoptic_json_path(self.root, split)
        self.image_dir = Path(image_dir) if image_dir else self.root / f"{split}2017"
        self.png_dir = Path(png_dir) if png_dir else self.root / "annotations" / f"panoptic_{split}2017"
        data = load_coco_json(self.json_path, self.image_dir)
        if not self.png_dir.is_dir():
            raise DatasetFileNotFoundError(f"{self.png_dir}: panoptic PNG directory not found")
        self.dataset_info = dataset_info_from_categories(data["categories"], str(self.json_path))
        self._cat_to_label = {cid: k for k, cid in enumerate(self.dataset_info.category_ids)}

        self.skipped_records: list[str] = []  # on_bad_sample="skip": what was left out, and why
        self.records = self._pair(data, on_bad_sample, max_samples)
        del data
        self.transform = (
            TrainTransform(image_size, scale_range, hflip_prob, mean, std) if train
            else EvalTransform(image_size, mean, std)
        )

    def _pair(self, data: dict[str, Any], on_bad_sample: str, max_samples: int | None) -> list[dict[str, Any]]:
        """One record per image of ``images`` with its annotation, checked (see ``on_bad_sample``)."""
        src = self.json_path
        images, anns = data["images"], data["annotations"]
        for what, items, keys in (("image", images, ("id", "file_name", "height", "width")),
                                  ("annotation", anns, ("image_id", "file_name"))):
            if not isinstance(items, list):
                raise DatasetError(f"{src}: {what}s must be a list")
            for i, item in enumerate(items):
                missing = [k for k in keys if not isinstance(item, dict) or k not in item]
                if missing:
                    raise DatasetError(f"{src}: {what} {i} ({str(item)[:80]}) lacks {missing}")
        by_id: dict[Any, dict[str, Any]] = {}
        for im in images:
            if im["id"] in by_id:
                raise DatasetError(f"{src}: duplicate image id {im['id']!r} ({by_id[im['id']]['file_name']} and "
                                   f"{im['file_name']}); image ids must be unique")
            by_id[im["id"]] = im
        ann_by_id: dict[Any, dict[str, Any]] = {}
        bad: list[str] = []
        for a in anns:
            if a["image_id"] in ann_by_id:
                raise DatasetError(f"{src}: two annotations for image id {a['image_id']!r} "
                                   f"({ann_by_id[a['image_id']]['file_name']} and {a['file_name']})")
            ann_by_id[a["image_id"]] = a
            if a["image_id"] not in by_id:
                bad.append(f"{src}: annotation {a['file_name']} refers to image id {a['image_id']!r}, "
                           "which is not in 'images'")
        records: list[dict[str, Any]] = []
        for im in images:
            if max_samples is not None and len(records) >= max_samples:
                break
            ann = ann_by_id.get(im["id"])
            problem = (f"{src}: image {im['file_name']} (id {im['id']!r}) has no panoptic annotation"
                       if ann is None else self._check_annotation(ann))
            if problem is not None:
                bad.append(problem)
                continue
            records.append({
                "image_id": im["id"], "file_name": im["file_name"],
                "height": int(im["height"]), "width": int(im["width"]),
                "png": ann["file_name"], "segments_info": ann["segments_info"],
            })
        if bad and on_bad_sample != "skip":
            more = f" (and {len(bad) - 1} more such problem(s))" if len(bad) > 1 else ""
            raise DatasetError(bad[0] + more + "; set data.init_args.on_bad_sample=skip to leave such records out")
        self.skipped_records.extend(bad)
        return records

    def _check_annotation(self, ann: dict[str, Any]) -> str | None:
        """What is wrong with one panoptic annotation, or None."""
        src, name = self.json_path, ann["file_name"]
        infos = ann.get("segments_info")
        if not isinstance(infos, list):
            return f"{src}: annotation {name} has no 'segments_info' list"
        seg_ids = set()
        for s in infos:
            if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
                return f"{src}: a segment of {name} lacks 'id' or 'category_id': {str(s)[:80]}"
            if s["category_id"] not in self._cat_to_label:
                return f"{src}: segment {s['id']} of {name} has unknown category id {s['category_id']}"
            if not isinstance(s["id"], int) or s["id"] in seg_ids or s["id"] <= 0:
                return f"{src}: {name} has an invalid or duplicate segment id {s['id']!r}"
            seg_ids.add(s["id"])
        return None

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, index: int) -> dict[str, Any]:
        """Untransformed data of one image: ``image uint8[H,W,3]``, ``segments int64[H,W]`` (index
        into ``labels``, -1 void), ``labels``/``is_crowd`` numpy arrays, ``record`` (JSON facts)."""
        rec = self.records[index]
        img_path = self.image_dir / rec["file_name"]
        png_path = self.png_dir / rec["png"]
        image = load_rgb(img_path)
        if image.shape[:2] != (rec["height"], rec["width"]):
            raise DatasetError(
                f"{img_path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but {self.json_path} "
                f"says {rec['width']}x{rec['height']}")
        ids = load_panoptic_png(png_path)
        if ids.shape != image.shape[:2]:
            raise DatasetError(
                f"{png_path}: PNG size {ids.shape[1]}x{ids.shape[0]} (WxH) differs from image "
                f"{img_path.name} size {image.shape[1]}x{image.shape[0]}")
        infos = rec["segments_info"]
        info_ids = np.array([s["id"] for s in infos], dtype=np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        order = np.argsort(info_ids)
        pos = np.searchsorted(info_ids[order], uniq) if len(info_ids) else np.zeros(len(uniq), np.int64)
        pos = np.minimum(pos, max(len(info_ids) - 1, 0))
        found = (info_ids[order][pos] == uniq) if len(info_ids) else np.zeros(len(uniq), bool)
        unknown = uniq[(~found) & (uniq != 0)]
        if len(unknown):
            raise DatasetError(
                f"{png_path}: segment id(s) {unknown[:10].tolist()} in the PNG are not in the "
                f"segments_info of {self.json_path}")
        missing = np.setdiff1d(info_ids, uniq)
        if len(missing):
            raise DatasetError(
                f"{png_path}: segment id(s) {missing[:10].tolist()} listed in {self.json_path} do not "
                "occur in the PNG")
        lut = np.where(found, order[pos] if len(info_ids) else -1, -1).astype(np.int64)
        segments = lut[inverse.reshape(-1)].reshape(ids.shape)
        labels = np.array([self._cat_to_label[s["category_id"]] for s in infos], dtype=np.int64)
        is_crowd = np.array([bool(s.get("iscrowd", 0)) for s in infos], dtype=bool)
        return {"image": image, "segments": segments, "labels": labels, "is_crowd": is_crowd, "record": rec}

    def __getitem__(self, index: int) -> Sample:
        raw = self.load_raw(index)
        rec = raw["record"]
        return build_sample(self.transform, self.train, raw["image"], raw["segments"], raw["labels"],
                            raw["is_crowd"], rec["image_id"], rec["file_name"],
                            str(self.image_dir / rec["file_name"]))


# ---------------------------------------------------------------------------------- datamodule


class CocoPanopticDataModule(SegmentationDataModule):
    """COCO 2017 panoptic (or vitp's generated synthetic dataset in the same layout).

    Loaders, augmentation, points and ``path`` (predict images): the arguments of ``SegmentationDataModule``.

    Args:
        root: dataset root with ``{split}2017/`` and ``annotations/``; None uses the generated
            synthetic dataset under ``data/generated/synthetic_coco`` (relative to the working
            directory), created when missing or when its parameters differ.
        train_split: split used by ``fit`` for training.
        val_split: split used for validation.
        test_split: split used by ``test`` (and ``predict`` when ``path`` is None).
        max_train_samples: use only the first n training images.
        max_eval_samples: use only the first n val/test images.
        synthetic_num_train: generated dataset: number of training images (root=None only).
        synthetic_num_val: generated dataset: number of validation images (root=None only).
        synthetic_image_size: generated dataset: long side of the images (root=None only).
        synthetic_seed: generated dataset: generation seed (root=None only).
    """

    def __init__(
        self,
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        synthetic_num_train: int = 300,
        synthetic_num_val: int = 50,
        synthetic_image_size: int = 256,
        synthetic_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.synthetic = root is None
        self.root = (Path.cwd() / DEFAULT_SYNTHETIC_ROOT) if root is None else Path(root)
        self.splits: dict[str, str] = {"train": train_split, "val": val_split, "test": test_split}
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self._synthetic_params = dict(num_train=synthetic_num_train, num_val=synthetic_num_val,
                                      image_size=synthetic_image_size, seed=synthetic_seed)

    def prepare_data(self) -> None:
        if self.synthetic and not self.predicts_own_images:
            ensure_synthetic_dataset(self.root, **self._synthetic_params)

    @cached_property
    def dataset_info(self) -> DatasetInfo:
        """Classes of the dataset (categories of the val split's JSON, else the train split's)."""
        self.prepare_data()
        order = [self.splits[s] for s in ("val", "train", "test")]
        for split in order:
            if panoptic_json_path(self.root, split).is_file():
                return read_dataset_info(self.root, split)
        raise DatasetFileNotFoundError(
            f"{panoptic_json_path(self.root, order[0])}: annotation file not found "
            f"(nor for splits {order[1]!r}, {order[2]!r})")

    def build_dataset(self, stage: Stage) -> CocoPanopticDataset:
        train = stage == "train"
        return CocoPanopticDataset(
            self.root, self.splits[stage], train=train, image_size=self.image_size,
            scale_range=self.scale_range, hflip_prob=self.hflip_prob, mean=self.mean, std=self.std,
            max_samples=self.max_train_samples if train else self.max_eval_samples,
            on_bad_sample=self.on_bad_sample,
        )
