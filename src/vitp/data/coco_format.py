"""Any images with COCO-format annotations: panoptic JSON + PNGs, instances JSON (masks), or
detection JSON used as box-only point supervision, mixable with mask data of the same label space.

* ``CocoInstancesDataset``: an ``instances_*.json``-style file (polygons or RLE; ``iscrowd`` kept as
  crowd). Overlapping instances are painted largest first, so a pixel belongs to the smallest
  instance covering it. With ``supervision="boxes"`` the boxes are painted the same way and every
  sample carries ``point_source="box"``: the data module then draws its points with a
  ``BoxSampler`` (centre of each box), never from the rectangles as if they were masks.
* ``CocoFormatDataModule``: your own dataset (see ``docs/datasets.md``).
"""

from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
from torch.utils.data import ConcatDataset, Dataset

from vitp.data.coco import CocoPanopticDataset, dataset_info_from_categories
from vitp.data.collate import Sample
from vitp.data.datamodule import SegmentationDataModule, Stage
from vitp.data.io import DatasetError, DatasetFileNotFoundError, load_coco_json, load_json, load_rgb
from vitp.data.labelmaps import build_sample
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform
from vitp.points import BoxSampler
from vitp.structures import DatasetInfo


def read_categories(path: str | Path) -> DatasetInfo:
    """The label space of a COCO-format JSON (panoptic or instances) from its ``categories``."""
    data = load_json(path)
    if "categories" not in data:
        raise DatasetError(f"{path}: missing 'categories'")
    return dataset_info_from_categories(data["categories"], str(path))


def category_map(categories: list[dict[str, Any]], info: DatasetInfo, match_by: str, unknown: str,
                 source: str) -> dict[int, int]:
    """JSON category id -> contiguous class of ``info`` (by id or by name); unknown ones raise or
    are left out (``unknown="skip"``)."""
    names = {n: k for k, n in enumerate(info.class_names)}
    out, missing = {}, []
    ids = {cid: k for k, cid in enumerate(info.category_ids)}
    for c in categories:
        k = ids.get(c["id"]) if match_by == "id" else names.get(c["name"])
        if k is None:
            missing.append(f"{c['id']}:{c['name']}")
        else:
            out[int(c["id"])] = k
    if missing and unknown == "error":
        raise DatasetError(f"{source}: categories {missing[:10]} are not in the label space (matched by "
                           f"{match_by}); set unknown categories to 'skip' to leave them out")
    return out


POLYGON_TOLERANCE = 1.0
"""Pixels a polygon vertex may lie outside the image (rounding in exported annotations)."""


def check_polygons(polygons: list[Any], h: int, w: int, where: str) -> None:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]``: each a list of numbers of even length, at
    least 3 points, every vertex inside the ``w x h`` image (within ``POLYGON_TOLERANCE``); a
    ``DatasetError`` starting with ``where`` otherwise (a per-sample problem: skipped with a warning
    under ``on_bad_sample: skip``)."""
    if not polygons:
        raise DatasetError(f"{where}: empty segmentation (no polygon)")
    for i, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
            raise DatasetError(f"{where}: polygon {i} is not a flat list of numbers [x0, y0, x1, y1, ...]")
        if len(poly) % 2:
            raise DatasetError(f"{where}: polygon {i} has an odd number of coordinates ({len(poly)}); expected "
                               "x, y pairs")
        if len(poly) < 6:
            raise DatasetError(f"{where}: polygon {i} has {len(poly) // 2} point(s); a polygon needs at least 3")
        xs, ys = np.asarray(poly[0::2], dtype=float), np.asarray(poly[1::2], dtype=float)
        t = POLYGON_TOLERANCE
        if not np.isfinite(xs).all() or not np.isfinite(ys).all() or xs.min() < -t or ys.min() < -t \
                or xs.max() > w + t or ys.max() > h + t:
            raise DatasetError(f"{where}: polygon {i} lies outside the {w}x{h} (WxH) image: x in "
                               f"[{xs.min():g}, {xs.max():g}], y in [{ys.min():g}, {ys.max():g}]")


class CocoInstancesDataset(Dataset):
    """Images + a COCO instances / detection JSON (items: :class:`vitp.data.collate.Sample`).

    Args:
        image_dir: folder of the images (``file_name`` in the JSON is relative to it).
        json_path: the COCO instances JSON.
        supervision: ``masks`` (segmentation polygons / RLE) or ``boxes`` (``bbox`` only; the
            samples carry ``point_source="box"``).
        dataset_info: map the JSON's categories into this label space (None: its own categories).
        match_by: match categories to ``dataset_info`` by ``id`` or ``name``.
        unknown: categories absent from ``dataset_info``: ``error`` or ``skip`` their annotations.
        train: training augmentation; otherwise eval resize only.
        max_samples: keep only the first n images.
        image_size, scale_range, hflip_prob, mean, std: transform arguments (``vitp.data.transforms``).
    """

    def __init__(self, image_dir: str | Path, json_path: str | Path, supervision: Literal["masks", "boxes"] = "masks",
                 dataset_info: DatasetInfo | None = None, match_by: Literal["id", "name"] = "id",
                 unknown: Literal["error", "skip"] = "error", train: bool = False, max_samples: int | None = None,
                 image_size: int = 512, scale_range: tuple[float, float] = (0.5, 2.0), hflip_prob: float = 0.5,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 ) -> None:
        self.image_dir, self.json_path = Path(image_dir), Path(json_path)
        self.supervision, self.train = supervision, train
        data = load_coco_json(self.json_path, self.image_dir)
        self.dataset_info = dataset_info or dataset_info_from_categories(data["categories"], str(self.json_path))
        self._cat = category_map(data["categories"], self.dataset_info, match_by, unknown, str(self.json_path))
        known = {int(c["id"]) for c in data["categories"]}
        by_image: dict[Any, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
        for a in data["annotations"]:
            if a.get("image_id") not in by_image:
                raise DatasetError(f"{self.json_path}: annotation {a.get('id')} refers to unknown image id "
                                   f"{a.get('image_id')!r}")
            if a["category_id"] not in known:
                raise DatasetError(f"{self.json_path}: annotation {a.get('id')} has unknown category id "
                                   f"{a['category_id']}")
            if supervision == "masks" and "segmentation" not in a:
                raise DatasetError(f"{self.json_path}: annotation {a.get('id')} has no 'segmentation'; use "
                                   "supervision='boxes' for detection-only data")
            if a["category_id"] in self._cat:
                by_image[a["image_id"]].append(a)
        self.records = [{"image_id": im["id"], "file_name": im["file_name"], "height": int(im["height"]),
                         "width": int(im["width"]), "anns": by_image[im["id"]]} for im in data["images"]][:max_samples]
        del data
        self.transform = (TrainTransform(image_size, scale_range, hflip_prob, mean, std) if train
                          else EvalTransform(image_size, mean, std))

    def __len__(self) -> int:
        return len(self.records)

    def _region(self, ann: dict[str, Any], h: int, w: int, image: Path) -> np.ndarray:
        if self.supervision == "boxes":
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            x0, y0 = min(max(int(np.floor(x)), 0), w - 1), min(max(int(np.floor(y)), 0), h - 1)
            x1, y1 = max(x0 + 1, min(int(np.ceil(x + bw)), w)), max(y0 + 1, min(int(np.ceil(y + bh)), h))
            m = np.zeros((h, w), dtype=bool)
            m[y0:y1, x0:x1] = True
            return m
        seg = ann["segmentation"]
        if isinstance(seg, list):
            check_polygons(seg, h, w, f"{self.json_path}: annotation {ann.get('id')} (image {image})")
        try:
            rles = mask_utils.frPyObjects(seg, h, w) if not isinstance(seg, dict) or isinstance(seg.get("counts"), list) \
                else seg
            return mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)
        except Exception as e:  # noqa: BLE001 (pycocotools raises plain Exceptions)
            raise DatasetError(f"{self.json_path}: cannot decode the segmentation of annotation {ann.get('id')}: "
                               f"{e}") from e

    def load_raw(self, index: int) -> dict[str, Any]:
        """Untransformed image and ground truth (as ``CocoPanopticDataset.load_raw``)."""
        rec = self.records[index]
        path = self.image_dir / rec["file_name"]
        image = load_rgb(path)
        h, w = image.shape[:2]
        if (h, w) != (rec["height"], rec["width"]):
            raise DatasetError(f"{path}: image is {w}x{h} (WxH) but {self.json_path} says "
                               f"{rec['width']}x{rec['height']}")
        regions = [self._region(a, h, w, path) for a in rec["anns"]]
        segments = np.full((h, w), -1, dtype=np.int64)
        for i in sorted(range(len(regions)), key=lambda j: -int(regions[j].sum())):  # largest first
            segments[regions[i]] = i
        labels = np.array([self._cat[a["category_id"]] for a in rec["anns"]], dtype=np.int64)
        is_crowd = np.array([bool(a.get("iscrowd", 0)) for a in rec["anns"]], dtype=bool)
        return {"image": image, "segments": segments, "labels": labels, "is_crowd": is_crowd, "record": rec}

    def __getitem__(self, index: int) -> Sample:
        raw = self.load_raw(index)
        rec = raw["record"]
        return build_sample(self.transform, self.train, raw["image"], raw["segments"], raw["labels"], raw["is_crowd"],
                            rec["image_id"], rec["file_name"], str(self.image_dir / rec["file_name"]),
                            "box" if self.supervision == "boxes" else None)


class CocoFormatDataModule(SegmentationDataModule):
    """Your own dataset in COCO format: images + a COCO panoptic JSON (with its PNG folder) or a
    COCO instances JSON per split, your own categories; optional box-only data (COCO detection
    JSONs, e.g. Objects365-style) added to training as point supervision.

    Loaders, augmentation, points and ``path`` (predict images): the arguments of
    ``SegmentationDataModule``. Paths are relative to ``root`` unless absolute.

    Args:
        root: dataset root with the image folders and JSON files named below.
        train_images: training image folder.
        train_json: training annotations (COCO panoptic or instances JSON).
        val_images: validation image folder.
        val_json: validation annotations.
        test_images: test image folder (None: the validation set).
        test_json: test annotations (None: the validation set).
        annotation_format: ``panoptic`` (JSON + PNG folder of the same name, as COCO), ``instances``
            (polygons / RLE), or ``auto``: panoptic when that PNG folder exists.
        box_datasets: extra training data with boxes only, e.g. ``[{images: o365/train, json:
            o365/train.json}]``; their categories are matched to this label space (``box_match_by``).
            An entry with ``optional: true`` whose JSON does not exist is left out with a warning.
            Needs ``point_sampler``: points are drawn inside the central part of each box
            (``box_center_fraction``); keep the proposer frozen.
        box_match_by: match box categories by ``id`` or ``name``.
        box_unknown: box categories outside the label space: ``error`` or ``skip``.
        box_center_fraction: fraction of a box (per side, around its centre) points are drawn from.
        max_train_samples: use only the first n training images (of each training source).
        max_eval_samples: use only the first n val/test images.
    """

    def __init__(
        self,
        root: str = "data/custom",
        train_images: str = "train",
        train_json: str = "annotations/train.json",
        val_images: str = "val",
        val_json: str = "annotations/val.json",
        test_images: str | None = None,
        test_json: str | None = None,
        annotation_format: Literal["auto", "panoptic", "instances"] = "auto",
        box_datasets: list[dict[str, str | bool]] | None = None,
        box_match_by: Literal["id", "name"] = "id",
        box_unknown: Literal["error", "skip"] = "error",
        box_center_fraction: float = 0.5,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.sources = {"train": (train_images, train_json), "val": (val_images, val_json),
                        "test": (test_images or val_images, test_json or val_json)}
        self.annotation_format = annotation_format
        self.box_datasets = [dict(d) for d in box_datasets or []]
        for d in self.box_datasets:
            if not {"images", "json"} <= set(d) <= {"images", "json", "optional"}:
                raise ValueError(f"box_datasets entries need the keys 'images' and 'json' (and may set 'optional'), "
                                 f"got {d}")
        self.box_match_by, self.box_unknown = box_match_by, box_unknown
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        if self.box_datasets:
            if self.point_sampler is None:
                raise ValueError("box_datasets supervise only the point classifier: set data.point_sampler")
            self.source_samplers["box"] = BoxSampler(self.point_sampler.num_points, box_center_fraction)

    def _path(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    @cached_property
    def dataset_info(self) -> DatasetInfo:
        """Categories of the validation JSON (else the training JSON)."""
        for stage in ("val", "train"):
            if self._path(self.sources[stage][1]).is_file():
                return read_categories(self._path(self.sources[stage][1]))
        raise DatasetFileNotFoundError(f"{self._path(self.sources['val'][1])}: annotation file not found "
                                       f"(nor {self._path(self.sources['train'][1])}); wrong root?")

    def _dataset(self, stage: Stage) -> Dataset:
        images, json_file = (self._path(p) for p in self.sources[stage])
        train = stage == "train"
        common = dict(train=train, image_size=self.image_size, scale_range=self.scale_range,
                      hflip_prob=self.hflip_prob, mean=self.mean, std=self.std,
                      max_samples=self.max_train_samples if train else self.max_eval_samples)
        png_dir = json_file.with_suffix("")
        panoptic = self.annotation_format == "panoptic" or (self.annotation_format == "auto" and png_dir.is_dir())
        if panoptic:
            ds = CocoPanopticDataset(self.root, stage, json_path=json_file, image_dir=images, png_dir=png_dir,
                                     on_bad_sample=self.on_bad_sample, **common)
        else:
            ds = CocoInstancesDataset(images, json_file, **common)
        if ds.dataset_info != self.dataset_info:
            raise DatasetError(f"{json_file}: its categories differ from those of the validation/training JSON")
        return ds

    def build_dataset(self, stage: Stage) -> Dataset:
        ds = self._dataset(stage)
        if stage != "train" or not self.box_datasets:
            return ds
        boxes = [CocoInstancesDataset(
            self._path(d["images"]), self._path(d["json"]), supervision="boxes", dataset_info=self.dataset_info,
            match_by=self.box_match_by, unknown=self.box_unknown, train=True, image_size=self.image_size,
            scale_range=self.scale_range, hflip_prob=self.hflip_prob, mean=self.mean, std=self.std,
            max_samples=self.max_train_samples) for d in self.box_datasets if self._box_source_present(d)]
        return ConcatDataset([ds, *boxes]) if boxes else ds

    def _box_source_present(self, source: dict[str, str | bool]) -> bool:
        """False (with a warning) for an ``optional`` box dataset whose JSON does not exist."""
        path = self._path(str(source["json"]))
        if path.is_file() or not source.get("optional", False):
            return True
        warnings.warn(f"{path}: not found; this box dataset is optional (box_datasets ... optional: true), "
                      "training on the mask annotations only", UserWarning, stacklevel=2)
        return False


__all__ = ["CocoFormatDataModule", "CocoInstancesDataset", "read_categories"]
