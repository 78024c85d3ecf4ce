"""``SegmentationDataModule``: the dataset-agnostic part of every vitp data module.

It owns loaders, collation (padding, point sampling), distributed evaluation samplers,
augmentation settings, ``predict`` on your own images and device transfer. A dataset's data
module subclasses it and implements ``dataset_info`` and ``build_dataset`` (see
``vitp.data.coco.CocoPanopticDataModule``); ``prepare_data`` when files must be made first.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vitp.data.collate import PanopticCollate
from vitp.data.folder import ImageFolderDataset
from vitp.data.io import check_on_bad_sample
from vitp.data.loader import EpochSampler, SampleReader, VitpDataLoader, run_seed, skipped_warning
from vitp.data.samplers import UnpaddedDistributedSampler
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitp.points import PointSampler
from vitp.structures import Batch, DatasetInfo

Stage = Literal["train", "val", "test"]


class SegmentationDataModule(L.LightningDataModule):
    """Base data module: a subclass says which dataset serves ``train`` / ``val`` / ``test``.

    Datasets yield ``vitp.data.collate.Sample``s; batches are ``vitp.structures.Batch``.

    Args:
        path: your own images for ``predict``: one image file or a folder of them (any format PIL
            reads; EXIF orientation applied, see ``vitp.data.folder``); None predicts on the test
            dataset.
        predict_dir: deprecated alias of ``path``.
        batch_size: training batch size.
        eval_batch_size: batch size of val/test/predict loaders (None: ``batch_size``).
        num_workers: DataLoader worker processes.
        image_size: eval: long side resized to this (aspect ratio kept); train: crop size.
        size_divisor: padded frame height/width are rounded up to a multiple of this.
        pad_to_square: pad every image to ``image_size x image_size`` (rounded up to
            ``size_divisor``) so all batches share one shape; False pads per batch.
        scale_range: training scale jitter range around ``image_size``.
        hflip_prob: training horizontal flip probability.
        mean: normalisation mean (RGB, 0..1 units; ImageNet by default).
        std: normalisation std (RGB, 0..1 units; ImageNet by default).
        point_sampler: training point sampler; fills ``Batch.points`` / ``point_labels``.
        val_points: also sample points on the validation loader (fixed seed per image).
        seed: seed of the training order, augmentation and points; None: the run's
            ``seed_everything`` seed. Each epoch's randomness is drawn from ``(seed, epoch, sample)``
            only, so a run resumed from a checkpoint (even one saved mid-epoch, see
            ``configs/checkpoint/every_n_steps.yaml``) sees the batches of the uninterrupted run, and
            a DDP run the batches of a single process with the same global batch (``vitp.data.loader``).
        on_bad_sample: a sample whose files are unreadable or disagree with the annotations
            (truncated or corrupt image, PNG ids not in the JSON, a record without annotation ...)
            stops the run with an error naming the file (``error``), or is skipped with a warning
            naming the file and counted (``skip``): logged as ``train/skipped_samples``,
            ``val/skipped_samples``, ``test/skipped_samples``; ``predict`` writes nothing for it.
            Problems of a whole file (duplicate image ids, missing keys, wrong root) always stop.
        label_space: a checkpoint (``.ckpt``), a pretrained folder or a ``label_space.json`` whose
            label space (category ids, names, thing/stuff) the model is built with instead of the
            dataset's. ``vitp validate|test|predict --ckpt_path CKPT`` sets it to CKPT when the
            checkpoint stores its label space, so predicting on ``path`` needs no dataset on disk
            (none is read or generated); a dataset that is read must have the same label space.
    """

    def __init__(
        self,
        path: str | None = None,
        predict_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        image_size: int = 256,
        size_divisor: int = 32,
        pad_to_square: bool = True,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        point_sampler: PointSampler | None = None,
        val_points: bool = False,
        seed: int | None = None,
        on_bad_sample: Literal["error", "skip"] = "error",
        label_space: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["point_sampler"])  # with the subclass's arguments
        if predict_dir is not None:
            if path is not None and str(path) != str(predict_dir):
                raise ValueError(f"data: both path={path!r} and its deprecated alias predict_dir={predict_dir!r} are set")
            warnings.warn("data.init_args.predict_dir is deprecated: use data.init_args.path (an image file or a "
                          "folder)", FutureWarning, stacklevel=2)
            path = predict_dir
        self.path = path
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.size_divisor = size_divisor
        self.pad_to_square = pad_to_square
        self.scale_range = tuple(scale_range)
        self.hflip_prob = hflip_prob
        self.mean, self.std = tuple(mean), tuple(std)
        self.point_sampler = point_sampler
        self.val_points = val_points
        self.seed = seed
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.skipped_samples: dict[str, int] = {}  # stage -> samples skipped (on_bad_sample=skip), this process
        self.train_position: dict[str, int] | None = None  # last training batch trained on (checkpointed)
        self._resume_position: dict[str, int] | None = None  # restored from a checkpoint, not yet resumed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self.source_samplers: dict[str, PointSampler] = {}  # samples with a point_source (coarse, box)
        self.label_space = label_space

    # -- what a dataset's data module provides
    @property
    def dataset_info(self) -> DatasetInfo:
        """The dataset's label space (linked into the model by the ``vitp`` CLI)."""
        raise NotImplementedError

    def build_dataset(self, stage: Stage) -> Dataset:
        """The dataset of a stage; ``train`` with augmentation, the others without."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.model_label_space.num_classes

    @functools.cached_property
    def model_label_space(self) -> DatasetInfo:
        """The label space the model is built with (linked by the ``vitp`` CLI): ``label_space``'s
        when set, else the dataset's."""
        if self.label_space is None:
            return self.dataset_info
        from vitp.checkpoint_heads import read_label_space

        return read_label_space(self.label_space)

    @property
    def predicts_own_images(self) -> bool:
        """``predict`` on ``path`` with a ``label_space``: no dataset file is needed (nor generated)."""
        fn = getattr(getattr(getattr(self, "trainer", None), "state", None), "fn", None)
        return self.path is not None and self.label_space is not None and fn in (None, "predict")

    def _check_label_space(self, stage: str) -> None:
        """The dataset a stage reads must have the label space the model was built with."""
        if self.label_space is None or self.dataset_info == self.model_label_space:
            return
        ours, theirs = self.dataset_info, self.model_label_space
        raise ValueError(
            f"{stage}: the dataset's label space ({ours.num_classes} classes, ids {list(ours.category_ids)[:20]}, "
            f"names {list(ours.class_names)[:20]}) differs from the model's, read from {self.label_space} "
            f"({theirs.num_classes} classes, ids {list(theirs.category_ids)[:20]}, names {list(theirs.class_names)[:20]})")

    # -- lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predicts_own_images:
            self.predict_dataset = ImageFolderDataset(self.path, self.image_size, self.mean, self.std)
            return
        self.prepare_data()
        if stage != "predict" or self.path is None:
            self._check_label_space(str(getattr(stage, "value", stage) or "setup"))
        if stage in (None, "fit"):
            self.train_dataset = self.build_dataset("train")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self.build_dataset("val")
        if stage in (None, "test"):
            self.test_dataset = self.build_dataset("test")
        if stage in (None, "predict"):
            self.predict_dataset = (
                ImageFolderDataset(self.path, self.image_size, self.mean, self.std)
                if self.path is not None else self.build_dataset("test")
            )

    def report_skipped(self, stage: str, messages: list[str]) -> None:
        """Warn about samples skipped by ``on_bad_sample=skip`` (naming their files) and count them."""
        skipped_warning(messages, stage)
        self.skipped_samples[stage] = self.skipped_samples.get(stage, 0) + len(messages)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"skipped_samples": dict(self.skipped_samples)} if self.skipped_samples else {}
        if self.train_position is not None:
            state["train_position"] = dict(self.train_position)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_samples = dict(state_dict.get("skipped_samples", {}))
        position = state_dict.get("train_position")
        self.train_position = self._resume_position = dict(position) if position is not None else None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record where the training loader stands when one of its batches is trained on (Lightning
        calls this hook for the batch about to be trained, not for the one it prefetched): saved in
        checkpoints by ``state_dict``, so a run resumed from a mid-epoch checkpoint starts at the next
        batch of the same epoch (``VitpDataLoader``)."""
        position = batch.train_position if isinstance(batch, Batch) else None
        if position is not None:
            self.train_position = position
        return batch

    def _take_resume_position(self) -> dict[str, int] | None:
        position, self._resume_position = self._resume_position, None
        return position

    def collate(self, point_sampler: PointSampler | None = None, seed: int | None = None) -> PanopticCollate:
        return PanopticCollate(
            size_divisor=self.size_divisor,
            fixed_size=self.image_size if self.pad_to_square else None,
            point_sampler=point_sampler, seed=seed, source_samplers=self.source_samplers,
        )

    def _loader(self, ds: Dataset | None, name: str, batch_size: int, shuffle: bool,
                collate: PanopticCollate) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{name} dataset is not set up; call setup() first")
        for part in getattr(ds, "datasets", [ds]):  # a ConcatDataset's parts
            skipped = getattr(part, "skipped_records", None)  # records dropped when the dataset was built
            if skipped:
                self.report_skipped(name, list(skipped))
                skipped.clear()  # reported once
        reader = SampleReader(ds, self.on_bad_sample)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler: Any = None
        if shuffle:  # Lightning keeps a DistributedSampler it is given (no re-wrapping under DDP)
            world, rank = ((torch.distributed.get_world_size(), torch.distributed.get_rank())
                           if distributed else (1, 0))
            sampler = EpochSampler(reader, run_seed(self.seed), num_replicas=world, rank=rank)
        elif distributed:
            sampler = UnpaddedDistributedSampler(reader)
        return VitpDataLoader(
            reader, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=False,
            on_skipped=functools.partial(self.report_skipped, name),
            resume=self._take_resume_position if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", self.batch_size, True,
                            self.collate(self.point_sampler))

    def val_dataloader(self) -> DataLoader:
        sampler = self.point_sampler if self.val_points else None
        return self._loader(self.val_dataset, "val", self.eval_batch_size, False,
                            self.collate(sampler, seed=0))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", self.eval_batch_size, False, self.collate())

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, "predict", self.eval_batch_size, False, self.collate())

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
