"""Reading dataset files, with errors that name the file: images, panoptic PNGs, JSON.

Images are read with PIL and converted to RGB (grayscale, CMYK, palette ...). EXIF orientation is
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
    """Segment ids ``int[H, W]`` -> panopticapi RGB ``uint8[H, W, 3]``."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


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
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot read {what} (corrupt or truncated?): {e}") from e


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB ``uint8[H, W, 3]`` without EXIF transposition (see module doc)."""

    def convert(im: Image.Image) -> np.ndarray:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8).copy()

    return _open(Path(path), "image file", convert)


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
