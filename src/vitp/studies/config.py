"""What a study reads from the run's config before any ``vitp`` command runs: the data module's
arguments (the YAML's, with the user's ``--data.init_args.X V`` overrides applied), the training
annotation file, the number of training points, and generated datasets of a given style."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def data_args(config: str | Path, extra: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of the config's data module with ``extra``'s
    ``--data.init_args.NAME VALUE`` (or ``=VALUE``) overrides applied."""
    data = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
    args = dict(data.get("init_args") or {})
    items = list(extra)
    for i, item in enumerate(items):
        if not item.startswith("--data.init_args."):
            continue
        key, eq, value = item[len("--data.init_args."):].partition("=")
        if not eq:
            if i + 1 >= len(items):
                continue
            value = items[i + 1]
        if "." not in key:
            args[key] = _value(value)
    return str(data.get("class_path", "")), args


def num_points(args: dict[str, Any], default: int = 128) -> int:
    """The config's training points per image (``point_sampler.init_args.num_points``)."""
    sampler = args.get("point_sampler") or {}
    return int((sampler.get("init_args") or {}).get("num_points", default)) if isinstance(sampler, dict) else default


def generated_root(args: dict[str, Any], root: Path, style: str = "default") -> Path:
    """A generated dataset of ``style`` at ``root`` with the data module's ``synthetic_*`` parameters
    (written when missing or different)."""
    from vitp.data.synthetic import ensure_synthetic_dataset

    return Path(ensure_synthetic_dataset(
        root, int(args.get("synthetic_num_train", 300)), int(args.get("synthetic_num_val", 50)),
        int(args.get("synthetic_image_size", 256)), int(args.get("synthetic_seed", 0)), style))


def training_json(class_path: str, args: dict[str, Any]) -> Path:
    """The training annotation file of a ``CocoPanopticDataModule`` or ``CocoFormatDataModule``
    (the default generated dataset is generated first when the config uses it)."""
    name = class_path.rsplit(".", 1)[-1]
    if name == "CocoPanopticDataModule":
        root = args.get("root")
        if root is None:
            from vitp.data.coco import DEFAULT_SYNTHETIC_ROOT

            root = generated_root(args, Path.cwd() / DEFAULT_SYNTHETIC_ROOT)
        return Path(root) / "annotations" / f"panoptic_{args.get('train_split', 'train')}2017.json"
    if name == "CocoFormatDataModule":
        path = Path(str(args.get("train_json", "annotations/train.json")))
        return path if path.is_absolute() else Path(str(args.get("root", "data/custom"))) / path
    raise ValueError(f"the annotation-budget study reads COCO-format training data (CocoPanopticDataModule or "
                     f"CocoFormatDataModule), not {class_path}")


def training_images(path: Path, limit: int | None = None) -> list[tuple[Any, int]]:
    """``(image_id, non-crowd segments)`` of each training image, in the file's image order
    (a COCO panoptic JSON's ``segments_info`` or a COCO instances JSON's ``annotations``)."""
    data = json.loads(Path(path).read_text())
    counts: dict[Any, int] = {im["id"]: 0 for im in data["images"]}
    for ann in data["annotations"]:
        if "segments_info" in ann:
            counts[ann["image_id"]] = sum(1 for s in ann["segments_info"] if not s.get("iscrowd", 0))
        elif not ann.get("iscrowd", 0) and ann["image_id"] in counts:
            counts[ann["image_id"]] += 1
    images = [(im["id"], counts[im["id"]]) for im in data["images"]]
    return images[:limit] if limit is not None else images
