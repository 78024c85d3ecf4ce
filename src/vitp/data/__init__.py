"""Data modules and datasets (files, augmentation, collation; nothing about models)."""

from vitp.data.coco import (
    CocoPanopticDataModule,
    CocoPanopticDataset,
    DatasetError,
    DatasetFileNotFoundError,
    ImageFolderDataset,
    read_dataset_info,
)
from vitp.data.collate import PanopticCollate, Sample
from vitp.data.synthetic import ensure_synthetic_dataset, generate_panoptic_dataset

__all__ = [
    "CocoPanopticDataModule",
    "CocoPanopticDataset",
    "DatasetError",
    "DatasetFileNotFoundError",
    "ImageFolderDataset",
    "PanopticCollate",
    "Sample",
    "ensure_synthetic_dataset",
    "generate_panoptic_dataset",
    "read_dataset_info",
]
