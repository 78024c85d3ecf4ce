"""A folder of the user's own images, for ``predict``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from vitp.data.collate import Sample
from vitp.data.io import DatasetError, DatasetFileNotFoundError, load_rgb
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform


class ImageFolderDataset(Dataset):
    """The user's own images (any extension PIL reads) for prediction; targets are empty
    (no masks, ``segments`` all -1), ``image_id`` is the file stem."""

    def __init__(
        self,
        directory: str | os.PathLike,
        image_size: int = 512,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DatasetFileNotFoundError(f"{self.directory}: prediction image directory not found")
        exts = {e.lower() for e in Image.registered_extensions()}
        self.files = sorted(p for p in self.directory.iterdir()
                            if p.is_file() and p.suffix.lower() in exts)
        if not self.files:
            raise DatasetError(f"{self.directory}: no image files found")
        self.transform = EvalTransform(image_size, mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        image = load_rgb(path)
        h0, w0 = image.shape[:2]
        img, _ = self.transform(image, None)
        h, w = img.shape[-2:]
        return Sample(
            image=img, masks=torch.zeros((0, h, w), dtype=torch.bool),
            labels=torch.zeros(0, dtype=torch.long), is_crowd=torch.zeros(0, dtype=torch.bool),
            segments=torch.full((h0, w0), -1, dtype=torch.long), image_id=path.stem,
            file_name=path.name, orig_size=(h0, w0), image_path=str(path),
        )
