"""Lightning callbacks of vitp."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class SkippedSamplesLogger(L.Callback):
    """Log ``{stage}/skipped_samples``: the samples the data module skipped (``on_bad_sample=skip``,
    ``SegmentationDataModule.skipped_samples``), summed over processes, at the end of every train,
    validation and test epoch. ``ViTPModule.configure_callbacks`` adds it to every run."""

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "on_bad_sample", "error") != "skip":
            return
        count = float(datamodule.skipped_samples.get(stage, 0))
        pl_module.log(f"{stage}/skipped_samples", count, sync_dist=True, reduce_fx="sum")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class PredictionFiles(L.Callback):
    """Write ``test`` and ``predict`` results under the module's ``output.export_dir`` (``vitp.export``):
    test: the main variant's predictions, ``metrics.json`` and ``report.html`` (``vitp.report``; rank
    0's images under DDP); predict: PNGs, JSON, one ``segments/<stem>.json`` per image and, with
    ``output.overlays``, overlays (``vitp.visualize``). ``ViTPModule.configure_callbacks`` adds it
    when ``export_dir`` is set. Writes as the batches come, so memory stays flat (``vitp predict``
    does not keep the predictions either).

    Args:
        background: ``predict`` writes on one background thread (in order), so the files of a batch
            are written while the model runs on the next, and a writer's error stops the run at the
            next batch or at the end. On by default: on a 2-core CPU, where writing the files costs
            more than the model, it made ``vitp predict`` 1.23x as fast on 60 photos and 1.40x on
            500, with the same files (docs/benchmarks.md); it holds one more batch of predictions
            in memory.
        max_pending: batches being written or waiting at once in the background.
    """

    def __init__(self, background: bool = True, max_pending: int = 1) -> None:
        super().__init__()
        self._writers: list[Any] = []
        self._report: Any = None
        self.background, self.max_pending = background, max(1, max_pending)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _submit(self, predictions: Any, batch: Any) -> None:
        if self._pool is None:
            self._write(predictions, batch)
            return
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()  # re-raises a writer's error here
        self._pending.append(self._pool.submit(self._write, predictions, batch))

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                future.result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # the run stops: the batches already predicted are still written (as in the main thread,
        # where each was written before the next was predicted); a writer's own error was raised
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._pending = None, []

    def _start(self, pl_module: L.LightningModule, per_image_json: bool) -> Any:
        from vitp.export import PredictionExporter

        exporter = PredictionExporter(pl_module.output.export_dir, pl_module.dataset_info,
                                      per_image_json=per_image_json)
        self._writers = [exporter]
        return exporter

    def _write(self, predictions: Any, batch: Any) -> None:
        for writer in self._writers:
            for pred, target in zip(predictions, batch.targets):
                writer.write(pred, target)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from vitp.report import ReportCollector

        self._start(pl_module, per_image_json=False)
        self._report = ReportCollector(pl_module.dataset_info)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._write(outputs.predictions[pl_module.main_variant], batch)
        self._report.add_batch(outputs, batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = pl_module.test_results
        self._writers[0].finalize(results)
        if trainer.is_global_zero:  # under DDP: the images of rank 0
            self._report.write(pl_module.output.export_dir, results)
        self._writers, self._report = [], None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module, per_image_json=True)
        if self.background:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitp-writer")
        if pl_module.output.overlays:
            from vitp.visualize import OverlayWriter

            self._writers.append(OverlayWriter(pl_module.output.export_dir, pl_module.dataset_info,
                                               _image_reader(trainer)))

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._submit(outputs, batch)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drain()
        self._writers[0].finalize(None)
        self._writers = []


def _image_reader(trainer: L.Trainer) -> Any:
    """The predict dataset's image reader (``read_image``: your own images are read with their EXIF
    orientation applied), so overlays show the pixels the predictions refer to."""
    loaders = trainer.predict_dataloaders
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        reader = getattr(getattr(loader, "dataset", None), "read_image", None)
        if reader is not None:
            return reader
    return None


def training_record(trainer: L.Trainer) -> dict[str, Any]:
    """The run's description for checkpoints and model cards: the training data (class, root), the
    last logged ``val/`` and ``test/`` metrics, epoch and step."""
    from vitp.checkpoint_heads import describe_data

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(("val/", "test/")) and isinstance(v, torch.Tensor) and v.numel() == 1}
    return {"data": describe_data(getattr(trainer, "datamodule", None)), "metrics": metrics,
            "epoch": int(trainer.current_epoch), "global_step": int(trainer.global_step)}


class TrainingRecord(L.Callback):
    """Store :func:`training_record` in every checkpoint (``vitp.checkpoint_heads.TRAINING_KEY``), for
    the model card of ``save_pretrained`` and ``vitp.Segmenter.training``."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        from vitp.checkpoint_heads import TRAINING_KEY

        checkpoint[TRAINING_KEY] = training_record(trainer)


class SaveProposer(L.Callback):
    """At the end of ``fit``, save the trained proposer with ``save_pretrained(dirpath)``.

    A later stage then builds it with ``model: <dirpath>`` (e.g. frozen, under a ViT-P classifier).

    Args:
        dirpath: directory to write (created when missing).
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        proposer = getattr(pl_module, "proposer", None)
        if proposer is None or not hasattr(proposer, "save_pretrained"):
            raise ValueError(f"SaveProposer: {type(proposer).__name__} has no save_pretrained()")
        if trainer.is_global_zero:
            proposer.save_pretrained(self.dirpath)
            rank_zero_info(f"proposer saved to {Path(self.dirpath).resolve()}")
        trainer.strategy.barrier("vitp-save-proposer")
