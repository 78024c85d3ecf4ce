"""Pictures of predictions: overlays on the original images (``vitp predict``, ``vitp.Segmenter``)
and figure panels (``scripts/make_figure.py``).

* :func:`overlay_panoptic`: coloured segments (stuff in its class colour, each thing instance in
  a shade of it), white outlines, optional class-name labels at each segment's most interior pixel.
* :func:`render_prediction`: the same from a ``Prediction`` and the dataset's label space.
* :func:`figure`: panels side by side with titles, as one image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from vitp.data.io import load_rgb
from vitp.structures import DatasetInfo, Prediction, Target


def class_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """``uint8[K, 3]`` distinct-ish colours, fixed for a given seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def label_anchors(segments: np.ndarray, num_segments: int) -> list[tuple[int, int] | None]:
    """Per segment index, its most interior pixel ``(y, x)`` (farthest from the segment's border),
    or None when the segment has no pixel."""
    out: list[tuple[int, int] | None] = []
    for i in range(num_segments):
        mask = np.pad((segments == i).astype(np.uint8), 1)
        if not mask.any():
            out.append(None)
            continue
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        out.append((int(y) - 1, int(x) - 1))
    return out


def draw_labels(image: np.ndarray, segments: np.ndarray, texts: Sequence[str | None],
                font_size: int | None = None) -> np.ndarray:
    """Write ``texts[i]`` (white on a dark box) at the most interior pixel of segment ``i``."""
    h, w = image.shape[:2]
    font = _font(font_size or max(9, min(h, w) // 28))
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for anchor, text in zip(label_anchors(segments, len(texts)), texts):
        if anchor is None or not text:
            continue
        y, x = anchor
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        left = int(np.clip(x - tw / 2, 0, max(0, w - tw - 2)))
        top = int(np.clip(y - th / 2, 0, max(0, h - th - 2)))
        draw.rectangle((left - 1, top - 1, left + tw + 1, top + th + 1), fill=(0, 0, 0))
        draw.text((left - x0, top - y0), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil).copy()


def overlay_panoptic(
    image: np.ndarray, segments: np.ndarray, labels: np.ndarray, is_thing: np.ndarray, alpha: float = 0.55,
    names: Sequence[str] | None = None, scores: Sequence[float] | None = None,
) -> np.ndarray:
    """Blend a panoptic result onto ``uint8[H, W, 3]``: stuff in its class colour, each thing
    instance in a shade of its class colour, white segment boundaries, void left untouched.

    ``segments int[H, W]`` indexes ``labels`` (-1 = void). With ``names`` (class names, indexed by
    label) each segment is labelled with its class name (and its score when ``scores`` is given).
    """
    labels = np.asarray(labels, dtype=np.int64)
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
    out = out.astype(np.uint8)
    if names is not None:
        texts = [names[int(c)] if scores is None else f"{names[int(c)]} {float(s):.2f}"
                 for c, s in zip(labels, scores if scores is not None else [None] * len(labels))]
        out = draw_labels(out, segments, texts)
    return out


def render_prediction(image: np.ndarray, pred: Prediction, info: DatasetInfo, kind: str = "panoptic",
                      labels: bool = True, scores: bool = False) -> np.ndarray:
    """Overlay of one task of ``pred`` (``panoptic`` or ``semantic``) on ``image uint8[H, W, 3]``."""
    is_thing = np.asarray(info.is_thing, dtype=bool)
    names = list(info.class_names) if labels else None
    if kind == "panoptic":
        if pred.panoptic is None:
            raise ValueError("the prediction has no panoptic result")
        pan = pred.panoptic
        return overlay_panoptic(image, pan.segments.cpu().numpy(), pan.labels.cpu().numpy(), is_thing,
                                names=names, scores=pan.scores.cpu().numpy() if scores else None)
    if kind == "semantic":
        if pred.semantic is None:
            raise ValueError("the prediction has no semantic result")
        sem = pred.semantic.cpu().numpy().astype(np.int64)
        sem = np.where((sem >= 0) & (sem < len(is_thing)), sem, -1)
        return overlay_panoptic(image, sem, np.arange(len(is_thing)), np.zeros_like(is_thing), names=names)
    raise ValueError(f"kind must be 'panoptic' or 'semantic', got {kind!r}")


def render_target(image: np.ndarray, target: Target, info: DatasetInfo, labels: bool = True) -> np.ndarray:
    """Overlay of a ground-truth target (its ``segments`` at the original size; crowd regions too)."""
    return overlay_panoptic(image, target.segments.cpu().numpy(), target.labels.cpu().numpy(),
                            np.asarray(info.is_thing, dtype=bool),
                            names=list(info.class_names) if labels else None)


def figure(panels: Sequence[tuple[str, np.ndarray]], columns: int | None = None, pad: int = 6,
           title_size: int = 16) -> Image.Image:
    """Panels ``(title, uint8[H, W, 3])`` on a white sheet, titles above, ``columns`` per row
    (default: all in one row); panels of other sizes are resized to the first one's."""
    if not panels:
        raise ValueError("no panels")
    h, w = panels[0][1].shape[:2]
    columns = columns or len(panels)
    rows = (len(panels) + columns - 1) // columns
    font = _font(title_size)
    title_h = title_size + 8
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + title_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (title, array) in enumerate(panels):
        r, c = divmod(i, columns)
        x, y = pad + c * (w + pad), pad + r * (h + title_h + pad)
        tile = Image.fromarray(array)
        if tile.size != (w, h):
            tile = tile.resize((w, h), Image.NEAREST)
        draw.text((x, y), title, fill=(0, 0, 0), font=font)
        sheet.paste(tile, (x, y + title_h))
    return sheet


class OverlayWriter:
    """Writes ``out_dir/overlays/{panoptic,semantic}/<image stem>.jpg`` for each prediction whose
    target knows its image file (semantic maps drawn like stuff, one colour per class; segments
    labelled with their class names).

    ``read_image`` reads the file the prediction refers to: ``load_rgb`` (dataset images, no EXIF
    transpose) by default; ``vitp predict`` on your own images passes the folder dataset's reader
    (EXIF orientation applied), so overlays match the predictions.
    """

    def __init__(self, out_dir: str | Path, dataset_info: DatasetInfo,
                 read_image: Callable[[str], np.ndarray] | None = None, labels: bool = True) -> None:
        self.dir = Path(out_dir) / "overlays"
        self.info = dataset_info
        self.read_image = read_image or load_rgb
        self.labels = labels

    def write(self, pred: Prediction, target: Target) -> list[Path]:
        if target.image_path is None:
            return []
        image = self.read_image(target.image_path)
        written = []
        for kind in ("panoptic", "semantic"):
            if getattr(pred, kind) is None:
                continue
            path = self.dir / kind / f"{Path(target.file_name).stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_prediction(image, pred, self.info, kind, self.labels)).save(path, quality=90)
            written.append(path)
        return written
