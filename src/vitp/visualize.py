"""Overlays of predictions on the original images (for `vitp predict` and inspection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitp.data.io import load_rgb
from vitp.structures import DatasetInfo, Prediction, Target


def class_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """``uint8[K, 3]`` distinct-ish colours, fixed for a given seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def overlay_panoptic(
    image: np.ndarray, segments: np.ndarray, labels: np.ndarray, is_thing: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """Blend a panoptic result onto ``uint8[H, W, 3]``: stuff in its class colour, each thing
    instance in a shade of its class colour, white segment boundaries, void left untouched."""
    palette = class_palette(int(is_thing.shape[0])).astype(np.float32)
    rng = np.random.default_rng(1)
    colours = palette[labels] if len(labels) else np.zeros((0, 3), np.float32)
    shade = rng.uniform(0.6, 1.4, size=(len(labels), 1)).astype(np.float32)
    colours = np.where(is_thing[labels][:, None], np.clip(colours * shade, 0, 255), colours)
    out = image.astype(np.float32)
    covered = segments >= 0
    out[covered] = (1 - alpha) * out[covered] + alpha * colours[segments[covered]]
    seg = torch.from_numpy(segments.astype(np.int64))[None, None].float()
    edge = (F.max_pool2d(seg, 3, 1, 1) != -F.max_pool2d(-seg, 3, 1, 1))[0, 0].numpy()
    out[edge & covered] = 255.0
    return out.astype(np.uint8)


class OverlayWriter:
    """Writes ``out_dir/overlays/{panoptic,semantic}/<image stem>.jpg`` for each prediction whose
    target knows its image file (semantic maps drawn like stuff, one colour per class)."""

    def __init__(self, out_dir: str | Path, dataset_info: DatasetInfo) -> None:
        self.dir = Path(out_dir) / "overlays"
        self.is_thing = np.asarray(dataset_info.is_thing, dtype=bool)

    def write(self, pred: Prediction, target: Target) -> list[Path]:
        if target.image_path is None:
            return []
        image = load_rgb(target.image_path)  # the pixels the annotations refer to (no EXIF transpose)
        layers = []
        if pred.panoptic is not None:
            layers.append(("panoptic", pred.panoptic.segments, pred.panoptic.labels.cpu().numpy(), self.is_thing))
        if pred.semantic is not None:
            layers.append(("semantic", pred.semantic, np.arange(len(self.is_thing)), np.zeros_like(self.is_thing)))
        written = []
        for kind, segments, labels, is_thing in layers:
            path = self.dir / kind / f"{Path(target.file_name).stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            blended = overlay_panoptic(image, segments.cpu().numpy(), labels, is_thing)
            Image.fromarray(blended).save(path, quality=90)
            written.append(path)
        return written
