"""The user's own images, for ``predict`` and the Python API (``vitp.Segmenter``).

Unlike dataset images (``vitp.data.io.load_rgb``), a user's photo is shown the way a viewer shows
it: the EXIF orientation is applied, and every prediction (PNGs, JSON, overlays) refers to the
upright image. Any mode PIL reads becomes RGB: grayscale (``L``, ``LA``), palette, CMYK, RGBA
(transparent pixels over white) and 16-bit grayscale (``I;16``: scaled from the full 16-bit range,
not clipped; 32-bit ``I`` / ``F``: by their own min..max).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from vitp.data.collate import Sample
from vitp.data.io import DatasetError, DatasetFileNotFoundError, _open, _over_white, pil_to_rgb
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform


def to_rgb_array(image: Any) -> np.ndarray:
    """A user image as RGB ``uint8[H, W, 3]``.

    Accepts a PIL image (EXIF orientation applied), a numpy array or a tensor: ``[H, W]``,
    ``[H, W, C]`` (numpy) or ``[C, H, W]`` (tensor), C in 1, 3, 4; uint8 as is, other integer
    types scaled by their range, floats taken as 0..1.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)  # tensors are channels-first
        array = t.numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be [H, W], [H, W, 3|4] (numpy) or [3|4, H, W] (tensor), got {array.shape}")
    if array.dtype == np.uint8:
        out = array
    elif np.issubdtype(array.dtype, np.floating):
        out = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        out = (array.astype(np.float64) * 255.0 / np.iinfo(array.dtype).max + 0.5).astype(np.uint8)
    else:
        raise TypeError(f"unsupported image dtype {array.dtype}")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    elif out.shape[-1] == 4:
        out = _over_white(out[..., :3], out[..., 3])
    return np.ascontiguousarray(out)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    return pil_to_rgb(ImageOps.exif_transpose(im))


def load_user_image(path: str | os.PathLike) -> np.ndarray:
    """Read a user's image file as RGB ``uint8[H, W, 3]``, EXIF orientation applied (module doc);
    missing or corrupt files raise a ``DatasetError`` naming the file."""
    return _open(Path(path), "image file", _pil_to_rgb)


def image_files(path: str | os.PathLike) -> list[Path]:
    """The image file ``path``, or the image files directly in the folder ``path`` (any extension PIL
    reads), sorted. Two files with the same stem (``a.jpg``, ``a.png``) would write the same output
    files: that is an error naming both."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetFileNotFoundError(f"{path}: no such image file or folder")
    exts = {e.lower() for e in Image.registered_extensions()}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise DatasetError(f"{path}: no image files found")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise DatasetError(f"{seen[f.stem]} and {f} would write the same output files (same stem); rename one")
        seen[f.stem] = f
    return files


def user_sample(image: np.ndarray, transform: EvalTransform, name: str, path: str | None = None) -> Sample:
    """One RGB image as a ``Sample`` without ground truth (no masks, ``segments`` all -1); the one
    place where ``vitp predict`` and ``vitp.Segmenter`` turn an image into model input.
    ``segments`` is a read-only broadcast of one -1 (no ``long[H0, W0]`` of a 12-MP photo)."""
    h0, w0 = image.shape[:2]
    img, _ = transform(image, None)
    h, w = img.shape[-2:]
    return Sample(
        image=img, masks=torch.zeros((0, h, w), dtype=torch.bool),
        labels=torch.zeros(0, dtype=torch.long), is_crowd=torch.zeros(0, dtype=torch.bool),
        segments=torch.full((1, 1), -1, dtype=torch.long).expand(h0, w0), image_id=Path(name).stem,
        file_name=name, orig_size=(h0, w0), image_path=path,
    )


class ImageFolderDataset(Dataset):
    """The user's own images (one file, or the image files of a folder) for prediction; targets are
    empty, ``image_id`` is the file stem. Images are read by :func:`load_user_image`
    (:meth:`read_image`, which overlays use too)."""

    read_image = staticmethod(load_user_image)

    def __init__(
        self,
        directory: str | os.PathLike,
        image_size: int = 512,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.directory = Path(directory)
        self.files = image_files(self.directory)
        self.transform = EvalTransform(image_size, mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        return user_sample(load_user_image(path), self.transform, path.name, str(path))
