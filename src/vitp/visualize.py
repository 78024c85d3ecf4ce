"""Pictures of predictions: overlays on the original images (``vitp predict``, ``vitp.Segmenter``)
and figure panels (``scripts/make_figure.py``).

* :func:`overlay_panoptic`: coloured segments (stuff in its class colour, each thing instance in
  a shade of it), white outlines, optional class-name labels near each segment's most interior
  pixel, placed so that no two labels overlap (``vitp.label_placement``; a label with no free place
  is left out, the legend still lists its segment).
* :func:`add_legend`: a panel beside the image, one row per segment: its colour, class name and
  score (or pixel share for semantic maps), best first.
* :func:`render_prediction`: the overlay (and legend) from a ``Prediction`` and the label space.
* :func:`figure`: panels side by side with titles, as one image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from vitp.data.io import load_rgb
from vitp.export import semantic_areas
from vitp.label_placement import label_anchors, place_labels
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


def draw_labels(image: np.ndarray, segments: np.ndarray, texts: Sequence[str | None],
                font_size: int | None = None, order: Sequence[int] | None = None) -> np.ndarray:
    """Write ``texts[i]`` (white on a dark box) near the most interior pixel of segment ``i``,
    labels never overlapping (:func:`place_labels`, in ``order``: default, largest segment first)."""
    h, w = image.shape[:2]
    size = font_size or max(9, min(h, w) // 28)
    font = _font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # measures text only
    anchors = label_anchors(segments, len(texts))
    if order is None:
        areas = np.bincount(segments[segments >= 0].ravel(), minlength=len(texts))
        order = list(np.argsort(-areas[: len(texts)], kind="stable"))
    order = [i for i in order if anchors[i] is not None and texts[i]]
    bboxes = [draw.textbbox((0, 0), texts[i], font=font) for i in order]
    boxes = place_labels([anchors[i] for i in order], [(x1 - x0 + 2, y1 - y0 + 2) for x0, y0, x1, y1 in bboxes], (h, w))
    out = image.copy()
    for i, box, (x0, y0, _, _) in zip(order, boxes, bboxes):
        if box is None:
            continue
        # drawn on the label's own piece of the image (its box and a margin of a font size, for any
        # ink past the box), at integer offsets: the bytes of drawing on the whole image, without
        # converting a photo to PIL and back (two copies of it)
        left, top = max(0, box[0] - size), max(0, box[1] - size)
        right, bottom = min(w, box[2] + size), min(h, box[3] + size)
        piece = Image.fromarray(out[top:bottom, left:right])
        pen = ImageDraw.Draw(piece)
        pen.rectangle((box[0] - left, box[1] - top, box[2] - 1 - left, box[3] - 1 - top), fill=(0, 0, 0))
        pen.text((box[0] + 2 - x0 - left, box[1] + 2 - y0 - top), texts[i], fill=(255, 255, 255), font=font)
        out[top:bottom, left:right] = np.asarray(piece)
    return out


def segment_colours(labels: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
    """``float[S, 3]``: stuff in its class colour, each thing instance in a shade of it."""
    labels = np.asarray(labels, dtype=np.int64)
    palette = class_palette(int(is_thing.shape[0])).astype(np.float32)
    colours = palette[labels] if len(labels) else np.zeros((0, 3), np.float32)
    shade = np.random.default_rng(1).uniform(0.6, 1.4, size=(len(labels), 1)).astype(np.float32)
    return np.where(is_thing[labels][:, None], np.clip(colours * shade, 0, 255), colours)


def add_legend(image: np.ndarray, colours: np.ndarray, texts: Sequence[str], font_size: int | None = None
               ) -> np.ndarray:
    """``image`` with a white panel on its right: one row per entry (a swatch of ``colours[i]``
    and ``texts[i]``), in the given order; rows that do not fit are summarised as "+N more"."""
    h = image.shape[0]
    font = _font(font_size or max(11, min(18, h // 30)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row = max(probe.textbbox((0, 0), "Ag", font=font)[3] + 6, 12)
    swatch = row - 4
    width = max([probe.textbbox((0, 0), t, font=font)[2] for t in texts] + [probe.textbbox((0, 0), "+999 more", font=font)[2]])
    panel_w = min(swatch + width + 16, max(120, image.shape[1]))
    panel = Image.new("RGB", (panel_w, h), (255, 255, 255))  # drawn alone, then put beside the image
    draw = ImageDraw.Draw(panel)
    fits = max(0, (h - 4) // row)
    shown = len(texts) if len(texts) <= fits else max(0, fits - 1)
    x = 6
    for i in range(shown):
        y = 4 + i * row
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        draw.text((x + swatch + 6, y), texts[i], fill=(0, 0, 0), font=font)
    if shown < len(texts):
        draw.text((x, 4 + shown * row), f"+{len(texts) - shown} more", fill=(0, 0, 0), font=font)
    return np.concatenate([image, np.asarray(panel)], axis=1)


def _edges(segments: np.ndarray) -> np.ndarray:
    """``bool[H, W]``: pixels whose 3 x 3 neighbourhood (inside the image) holds another value (a
    3 x 3 max differing from the 3 x 3 min). OpenCV's dilation and erosion ignore the pixels outside
    the image by default, as this needs, and are 5x faster than numpy's shifted views on a photo."""
    seg = np.ascontiguousarray(segments)
    if seg.size == 0:
        return np.zeros(seg.shape, dtype=bool)
    if seg.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):  # OpenCV's morphology types
        seg = seg.astype(np.uint16 if 0 <= seg.min() and seg.max() < 1 << 16 else np.float64)
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(seg, kernel) != cv2.erode(seg, kernel)


def overlay_panoptic(
    image: np.ndarray, segments: np.ndarray, labels: np.ndarray, is_thing: np.ndarray, alpha: float = 0.55,
    names: Sequence[str] | None = None, scores: Sequence[float] | None = None, legend: bool = False,
    legend_values: Sequence[str] | None = None,
) -> np.ndarray:
    """Blend a panoptic result onto ``uint8[H, W, 3]``: stuff in its class colour, each thing
    instance in a shade of its class colour, white segment boundaries, void left untouched.

    ``segments int[H, W]`` indexes ``labels`` (-1 = void). With ``names`` (class names, indexed by
    label) each segment is labelled with its class name (and its score when ``scores`` is given).
    With ``legend`` (and ``names``), a legend panel is added on the right: colour, class name and
    ``legend_values[i]`` (default: the score) per segment present, highest score first.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay_panoptic needs a uint8[H, W, 3] image, got {image.dtype}{list(image.shape)}")
    labels = np.asarray(labels, dtype=np.int64)
    colours = segment_colours(labels, is_thing)
    # the blend ``uint8((1 - alpha) * pixel + alpha * colour)`` (float32) takes 256 values per
    # segment and channel: it is tabulated once and read per pixel (a gather instead of float
    # arithmetic over the photo; the same bytes), void pixels reading the identity row
    n = len(colours)
    values = np.arange(256, dtype=np.float32)
    table = np.empty((3, n + 1, 256), dtype=np.uint8)
    table[:, :n] = ((1 - alpha) * values + alpha * colours.astype(np.float32).T[:, :, None]).astype(np.uint8)
    table[:, n] = np.arange(256, dtype=np.uint8)
    kind = np.uint16 if n < 1 << 16 else np.int32  # 2-byte segment indices while they fit
    rows = np.empty(segments.shape, dtype=kind)  # segment index per pixel, n for void
    out = np.empty(image.shape, dtype=np.uint8)
    # a band of rows at a time: the temporaries stay in cache and below glibc's mmap threshold (not
    # mapped and faulted in afresh); 0.55-0.85x the time of whole-photo arrays at 12 MP
    step = max(1, (1 << 18) // max(1, segments.shape[1]))
    for y0 in range(0, segments.shape[0], step):
        band = segments[y0:y0 + step]
        np.copyto(rows[y0:y0 + step], np.where(band >= 0, band, n), casting="unsafe")
        start = rows[y0:y0 + step].astype(np.intp) * 256
        for c in range(3):
            np.take(table[c].reshape(-1), start + image[y0:y0 + step, :, c], out=out[y0:y0 + step, :, c])
    covered = rows != n
    np.copyto(out, np.uint8(255), where=(_edges(rows) & covered)[..., None])
    if names is None:
        return out
    order = None if scores is None else list(np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"))
    with_score = scores is not None and legend_values is None
    texts = [f"{names[int(c)]} {float(s):.2f}" if with_score else names[int(c)]
             for c, s in zip(labels, scores if scores is not None else [None] * len(labels))]
    out = draw_labels(out, segments, texts, order=order)
    if legend:
        present = np.bincount(rows.ravel(), minlength=n + 1)[:n] > 0
        if legend_values is None:
            legend_values = [f"{float(s):.2f}" for s in scores] if scores is not None else [""] * len(labels)
        rows = [i for i in (order if order is not None else range(len(labels))) if present[i]]
        out = add_legend(out, colours[rows], [f"{names[int(labels[i])]} {legend_values[i]}".strip() for i in rows])
    return out


def render_prediction(image: np.ndarray, pred: Prediction, info: DatasetInfo, kind: str = "panoptic",
                      labels: bool = True, scores: bool = False, legend: bool = False) -> np.ndarray:
    """Overlay of one task of ``pred`` (``panoptic`` or ``semantic``) on ``image uint8[H, W, 3]``;
    with ``legend`` a legend panel on the right (panoptic: score per segment; semantic: share of
    the image per class)."""
    is_thing = np.asarray(info.is_thing, dtype=bool)
    names = list(info.class_names) if labels or legend else None
    if kind == "panoptic":
        if pred.panoptic is None:
            raise ValueError("the prediction has no panoptic result")
        pan = pred.panoptic
        segment_scores = pan.scores.cpu().numpy() if scores or legend else None
        return overlay_panoptic(image, pan.segments.cpu().numpy(), pan.labels.cpu().numpy(), is_thing,
                                names=names, scores=segment_scores, legend=legend)
    if kind == "semantic":
        if pred.semantic is None:
            raise ValueError("the prediction has no semantic result")
        counts = semantic_areas(pred.semantic, len(is_thing)).numpy()
        sem = pred.semantic.cpu().numpy()
        if counts.sum() < sem.size:  # some pixels have no class: void in the overlay (a copy only then)
            sem = np.where((sem >= 0) & (sem < len(is_thing)), sem, -1)
        share = counts / max(1, sem.size)
        return overlay_panoptic(image, sem, np.arange(len(is_thing)), np.zeros_like(is_thing), names=names,
                                scores=share if legend else None, legend=legend,
                                legend_values=[f"{100 * v:.0f}%" for v in share])
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
            if pred.result(kind) is None:
                continue
            path = self.dir / kind / f"{Path(target.file_name).stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_prediction(image, pred, self.info, kind, self.labels, legend=self.labels)).save(
                path, quality=90)
            written.append(path)
        return written
