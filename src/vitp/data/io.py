"""Reading dataset files, with errors that name the file: images, panoptic PNGs, JSON.

Images are read with PIL and converted to RGB (grayscale, CMYK, palette, transparency over white,
16-bit grayscale scaled; :func:`pil_to_rgb`). EXIF orientation is
deliberately NOT applied: COCO annotations (sizes in the JSON and the panoptic PNGs) refer to the
stored pixel array, ignoring the EXIF orientation tag, so transposing would misalign them.
Truncated or corrupt files raise (PIL's ``LOAD_TRUNCATED_IMAGES`` is never set).

Panoptic PNGs encode segment ids as panopticapi does: ``id = R + 256 G + 256^2 B``, 0 = void
(``id2rgb`` / ``rgb2id``; the one codec of vitp, used for reading and writing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A file the dataset needs does not exist (the message names the expected path)."""


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids ``int[H, W]`` -> panopticapi RGB ``uint8[H, W, 3]`` (``id % 256``, ``id // 256 % 256``,
    ``id // 65536 % 256``): the three low bytes of each little-endian int64, read without arithmetic
    (30x faster than the divisions on a photo-sized map)."""
    ids = np.ascontiguousarray(ids, dtype="<i8")
    return np.ascontiguousarray(ids.view(np.uint8).reshape(*ids.shape, 8)[..., :3])


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """panopticapi RGB ``uint8[H, W, 3]`` -> segment ids ``int64[H, W]``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _open(path: Path, what: str, convert) -> np.ndarray:
    """``convert(PIL image)`` of the file at ``path``; missing or unreadable files raise a
    ``DatasetError`` naming the file (``what`` says which kind of file it is)."""
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except FileNotFoundError:
        raise DatasetFileNotFoundError(f"{path}: {what} not found") from None
    except DatasetError as e:
        if str(path) in str(e):
            raise
        raise DatasetError(f"{path}: {what}: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot read {what} (corrupt or truncated?): {e}") from e


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode as RGB ``uint8[H, W, 3]`` (no EXIF transposition): grayscale, palette, CMYK;
    transparency over white; 16-bit grayscale (``I;16``) scaled from the full 16-bit range (PIL's own
    ``convert("RGB")`` would clip it to white); 32-bit ``I`` / ``F`` by their own min..max.
    A zero-size image is a :class:`DatasetError`."""
    if im.width == 0 or im.height == 0:
        raise DatasetError(f"zero-size image ({im.width}x{im.height})")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0  # the full 16-bit range
        else:  # 32-bit integer / float images have no fixed range: their own min..max
            lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255.0
        return np.repeat((a + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        return _over_white(rgba[..., :3], rgba[..., 3])
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8).copy()


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB ``uint8[H, W, 3]`` without EXIF transposition (see module doc); modes as
    :func:`pil_to_rgb`."""
    return _open(Path(path), "image file", pil_to_rgb)


def load_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panopticapi PNG as segment ids ``int64[H, W]`` (0 = void)."""
    path = Path(path)

    def convert(im: Image.Image) -> np.ndarray:
        if im.mode == "RGBA":
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise DatasetError(f"{path}: panoptic PNG must be RGB-encoded, got mode {im.mode!r}")
        return rgb2id(np.asarray(im))

    return _open(path, "panoptic PNG", convert)


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read an annotation JSON file holding an object."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot parse annotation JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: annotation JSON must be an object")
    return data


def load_coco_json(path: str | os.PathLike, image_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO-style annotation JSON (``images``, ``annotations``, ``categories`` required) whose
    images live in ``image_dir``; errors name the file or directory."""
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing {key!r}")
    if not Path(image_dir).is_dir():
        raise DatasetFileNotFoundError(f"{image_dir}: image directory not found")
    return data


def check_on_bad_sample(value: str) -> str:
    """The ``on_bad_sample`` setting, checked: ``"error"`` or ``"skip"``."""
    if value not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {value!r}")
    return value
