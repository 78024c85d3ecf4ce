"""Datasets of images with per-pixel label files (semantic maps, instance-id maps).

Shared by ADE20K and Cityscapes: pairing image and label files by name (with errors that name the
files), per-class segments from a class map, the check that label values are in the label table,
and :func:`build_sample`, the one place (COCO included) where a decoded image becomes a
:class:`vitp.data.collate.Sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitp.data.collate import Sample
from vitp.data.io import DatasetError, DatasetFileNotFoundError, check_on_bad_sample, load_rgb
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform


def build_sample(
    transform: Callable, train: bool, image: np.ndarray, segments: np.ndarray, labels: np.ndarray,
    is_crowd: np.ndarray, image_id: Any, file_name: str, image_path: str | None,
    point_source: str | None = None,
) -> Sample:
    """Transform one decoded image (``segments int64[H0, W0]`` index into ``labels``, -1 void).

    Training drops the segments absent from the augmented crop (``segments`` then maps their pixels
    to -1); evaluation keeps all of them and the untouched original ``segments``.
    """
    img, seg = transform(image, segments.astype(np.int32))
    seg_t = torch.from_numpy(np.ascontiguousarray(seg)).long()
    n = len(labels)
    masks = seg_t[None] == torch.arange(n).view(n, 1, 1)
    segments_t = torch.from_numpy(np.ascontiguousarray(segments)).long()
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    crowd_t = torch.as_tensor(is_crowd, dtype=torch.bool)
    if train:
        keep = masks.flatten(1).any(1)
        if not bool(keep.all()):
            remap = torch.full((n + 1,), -1, dtype=torch.long)
            remap[:n][keep] = torch.arange(int(keep.sum()))
            segments_t = remap[segments_t]  # -1 stays -1 (index n -> -1)
            masks, labels_t, crowd_t = masks[keep], labels_t[keep], crowd_t[keep]
    return Sample(
        image=img, masks=masks, labels=labels_t, is_crowd=crowd_t, segments=segments_t,
        image_id=image_id, file_name=file_name, orig_size=(int(image.shape[0]), int(image.shape[1])),
        image_path=image_path, point_source=point_source,
    )


def load_label_png(path: Path, what: str) -> np.ndarray:
    """A single-channel label PNG (8 or 16 bit) as ``int64[H, W]``; errors name the file."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"{path}: {what} must be a single-channel PNG, got mode {im.mode!r}")
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise DatasetFileNotFoundError(f"{path}: {what} not found") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read {what} (corrupt or truncated?): {e}") from e


def check_values(values: np.ndarray, allowed: np.ndarray, path: Path, what: str) -> None:
    """Raise naming ``path`` when some of ``values`` are not in ``allowed``."""
    bad = np.setdiff1d(values, allowed)
    if len(bad):
        raise DatasetError(f"{path}: {what} value(s) {bad[:10].tolist()} are outside the label table")


def class_segments(class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous class map (``-1`` = void) -> one segment per class present: ``segments`` (index
    into ``labels``, -1 void) and ``labels``."""
    classes, inverse = np.unique(class_map, return_inverse=True)
    inverse = inverse.reshape(class_map.shape)
    if len(classes) and classes[0] < 0:
        return inverse - 1, classes[1:].astype(np.int64)
    return inverse.astype(np.int64), classes.astype(np.int64)


def pair_files(image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str,
               recursive: bool = False, skipped: list[str] | None = None) -> list[tuple[Path, Path, str]]:
    """``(image, label, stem)`` for every image ``STEM{image_suffix}`` under ``image_dir`` and its
    label ``STEM{label_suffix}`` at the same relative place under ``label_dir``, sorted by stem.

    A missing directory or no images raise a :class:`DatasetError` naming the directory. Images and
    labels that do not match one to one raise one naming the directories and the first unmatched
    files, unless ``skipped`` is given (``on_bad_sample="skip"``): then each unmatched file is left
    out and a message naming it and the file it lacks is appended to ``skipped``; if no pair is
    left, that still raises.
    """
    for d, what in ((image_dir, "image directory"), (label_dir, "label directory")):
        if not d.is_dir():
            raise DatasetFileNotFoundError(f"{d}: {what} not found (wrong root or missing split?)")
    pattern = ("**/*" if recursive else "*")
    images = {p.relative_to(image_dir).as_posix()[: -len(image_suffix)]: p
              for p in image_dir.glob(pattern + image_suffix) if p.is_file()}
    labels = {p.relative_to(label_dir).as_posix()[: -len(label_suffix)]: p
              for p in label_dir.glob(pattern + label_suffix) if p.is_file()}
    if not images:
        raise DatasetError(f"{image_dir}: no images '*{image_suffix}' found")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    paired = sorted(set(images) & set(labels))
    if (no_label or no_image) and (skipped is None or not paired):
        advice = ("; set data.init_args.on_bad_sample=skip to leave unpaired files out" if skipped is None
                  else "; no image has its label file (wrong label suffix or directory?)")
        raise DatasetError(
            f"{image_dir} has {len(images)} images and {label_dir} has {len(labels)} label files; "
            f"images without label: {[str(images[k].name) for k in no_label[:3]]}, "
            f"labels without image: {[str(labels[k].name) for k in no_image[:3]]}" + advice)
    if skipped is not None:
        skipped.extend(f"{images[k]}: image has no label file (expected {label_dir / (k + label_suffix)})"
                       for k in no_label)
        skipped.extend(f"{labels[k]}: label file has no image (expected {image_dir / (k + image_suffix)})"
                       for k in no_image)
    return [(images[k], labels[k], Path(k).name) for k in paired]


@dataclass
class Record:
    """One image of a label-map dataset: its file, its label files and its id."""

    image: Path
    labels: tuple[Path, ...]
    image_id: str


class LabelMapDataset(Dataset):
    """Base of datasets whose ground truth is per-pixel label files.

    Subclasses fill ``self.records`` and implement :meth:`decode`. Items are
    :class:`vitp.data.collate.Sample`; train/eval transforms as in ``vitp.data.transforms``.
    ``point_source``: set on every sample (``"coarse"`` for coarse labels, see ``PanopticCollate``).
    ``on_bad_sample``: ``skip`` leaves out images without label files (and label files without
    image) when pairing, listing them in ``skipped_records`` (the data module warns and counts them);
    ``error`` raises naming them. Files that cannot be read or hold values outside the label table
    raise a :class:`DatasetError` when the sample is read (the loader skips those, see
    ``vitp.data.loader``).
    """

    def __init__(
        self,
        train: bool = False,
        image_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        point_source: str | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        self.train = train
        self.point_source = point_source
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.records: list[Record] = []
        self.skipped_records: list[str] = []  # on_bad_sample="skip": what was left out, and why
        self.transform = (TrainTransform(image_size, scale_range, hflip_prob, mean, std) if train
                          else EvalTransform(image_size, mean, std))

    def decode(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(segments int64[H, W], labels int64[N], is_crowd bool[N])`` of one record."""
        raise NotImplementedError

    def pair(self, image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str,
             recursive: bool = False) -> list[tuple[Path, Path, str]]:
        """:func:`pair_files` with this dataset's ``on_bad_sample`` (skipped files go to
        ``skipped_records``)."""
        return pair_files(image_dir, image_suffix, label_dir, label_suffix, recursive=recursive,
                          skipped=self.skipped_records if self.on_bad_sample == "skip" else None)

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, index: int) -> dict[str, Any]:
        """Untransformed image and ground truth (as ``CocoPanopticDataset.load_raw``)."""
        rec = self.records[index]
        image = load_rgb(rec.image)
        segments, labels, is_crowd = self.decode(rec)
        if segments.shape != image.shape[:2]:
            raise DatasetError(
                f"{rec.labels[0]}: label size {segments.shape[1]}x{segments.shape[0]} (WxH) differs from "
                f"image {rec.image.name} size {image.shape[1]}x{image.shape[0]}")
        return {"image": image, "segments": segments, "labels": labels, "is_crowd": is_crowd, "record": rec}

    def __getitem__(self, index: int) -> Sample:
        raw = self.load_raw(index)
        rec = raw["record"]
        return build_sample(self.transform, self.train, raw["image"], raw["segments"], raw["labels"],
                            raw["is_crowd"], rec.image_id, rec.image.name, str(rec.image), self.point_source)
