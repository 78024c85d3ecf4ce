"""Data modules and datasets (files, augmentation, collation; nothing about models)."""

from vitp.data.ade20k import ADE20KDataModule, ADE20KSemanticDataset
from vitp.data.cityscapes import CityscapesDataModule, CityscapesDataset
from vitp.data.coco import CocoPanopticDataModule, CocoPanopticDataset, read_dataset_info
from vitp.data.coco_format import CocoFormatDataModule, CocoInstancesDataset
from vitp.data.collate import PanopticCollate, Sample
from vitp.data.datamodule import SegmentationDataModule
from vitp.data.folder import ImageFolderDataset
from vitp.data.io import DatasetError, DatasetFileNotFoundError
from vitp.data.synthetic import ensure_synthetic_dataset, generate_panoptic_dataset

__all__ = [
    "ADE20KDataModule",
    "ADE20KSemanticDataset",
    "CocoFormatDataModule",
    "CocoInstancesDataset",
    "CityscapesDataModule",
    "CityscapesDataset",
    "CocoPanopticDataModule",
    "CocoPanopticDataset",
    "DatasetError",
    "DatasetFileNotFoundError",
    "ImageFolderDataset",
    "PanopticCollate",
    "Sample",
    "SegmentationDataModule",
    "ensure_synthetic_dataset",
    "generate_panoptic_dataset",
    "read_dataset_info",
]
