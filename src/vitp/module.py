"""The LightningModule: wiring, the training loss, evaluation and logging.

Inference lives in ``pipeline.py`` (settings: ``vitp.settings``), what the classifier trains on in
``vitp.training.point_supervision``, the optimiser in ``optim.py``, files in ``export.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from vitp.checkpoint_heads import checkpoint_extras, fit_proposer_head, reconcile_checkpoint
from vitp.classifiers.base import PointClassifier
from vitp.metrics.point_accuracy import PointAccuracy
from vitp.nonfinite import NonFiniteLossError, check_skip_supported, nonfinite_message
from vitp.pipeline import PipelineOutput, TwoStagePipeline
from vitp.proposers.base import MaskProposer
from vitp.settings import EvaluationSettings, InferenceSettings, OptimizerSettings, OutputSettings
from vitp.structures import TASKS, Batch, DatasetInfo, Prediction, Task, Variant, check_task
from vitp.training.point_supervision import GroundTruthPoints
from vitp.training.point_targets import ground_truth_point_masks


class ViTPModule(L.LightningModule):
    """Mask proposer + optional ViT-P point classifier, trained and evaluated end to end.

    Training optimises the point classifier with cross-entropy on points (``train_classifier``,
    points from ``point_supervision``) and/or the proposer with its own loss (``train_proposer``);
    frozen parts stay in eval mode. Validation and test run every task in ``tasks`` and log PQ /
    mIoU / AP for the main variant (``vitp`` when a classifier is set, else ``proposer``) under
    ``val/pq``..., and for the other variants with a suffix (``val/pq_proposer``, ``val/pq_oracle``).

    Args:
        proposer: the mask proposer.
        classifier: the point classifier (ViT-P); None evaluates the proposer alone.
        dataset_info: label space, linked from the data module.
        tasks: tasks to post-process and evaluate.
        train_proposer: optimise the proposer with its own loss.
        train_classifier: optimise the point classifier.
        point_supervision: what the classifier trains on (``vitp.training.GroundTruthPoints``, the
            default and the paper's, or ``vitp.training.ProposalPoints``: also the frozen proposer's
            proposals labelled with their matched class or "no object", a K+1-th output).
        inference: fusion, inference points and post-processing thresholds.
        evaluation: extra variants reported by validation and test.
        optimization: optimiser, schedule and the non-finite-loss policy.
        output: files written by test and predict, and predict's thresholds.
        reinit_heads_on_mismatch: the one switch for weights trained on another label space: class-sized
            layers (classifier head, proposer class layers) that do not fit the data's classes, from
            ``--ckpt_path``, the classifier's ``checkpoint_path`` or a pretrained proposer's ``model``,
            start afresh, with a warning, instead of failing; ``--ckpt_path`` never in ``validate``,
            ``test`` or ``predict`` (see ``vitp.checkpoint_heads``).
    """

    def __init__(
        self,
        proposer: MaskProposer,
        classifier: PointClassifier | None = None,
        dataset_info: DatasetInfo | None = None,
        tasks: list[Task] | None = None,
        train_proposer: bool = False,
        train_classifier: bool = True,
        point_supervision: GroundTruthPoints | None = None,
        inference: InferenceSettings = InferenceSettings(),
        evaluation: EvaluationSettings = EvaluationSettings(),
        optimization: OptimizerSettings = OptimizerSettings(),
        output: OutputSettings = OutputSettings(),
        reinit_heads_on_mismatch: bool = False,
    ) -> None:
        super().__init__()
        if dataset_info is None:
            raise ValueError("ViTPModule needs dataset_info (linked from the data module by `vitp`)")
        # Settings live in plain attributes, not save_hyperparameters(): LightningCLI lets a
        # checkpoint's hyper-parameters override the command line, which would silently ignore
        # e.g. `vitp test --ckpt_path X --model.init_args.output.export_dir D`. The config decides.
        self.evaluation, self.optimization, self.output = evaluation, optimization, output
        self.proposer = proposer
        self.classifier = classifier
        self.dataset_info = dataset_info
        self.point_supervision = GroundTruthPoints() if point_supervision is None else point_supervision
        if self.point_supervision.no_object and classifier is None:
            raise ValueError(f"{type(self.point_supervision).__name__} needs a classifier")
        self.point_supervision.check(classifier is not None and classifier.needs_point_masks)
        if classifier is not None:
            classifier.set_num_classes(dataset_info.num_classes + int(self.point_supervision.no_object),
                                       reinit_heads=reinit_heads_on_mismatch)
        fit_proposer_head(proposer, reinit_heads_on_mismatch)
        self.tasks = tuple(check_task(task) for task in (tasks or TASKS))
        self.register_buffer("is_thing", dataset_info.thing_mask(), persistent=False)
        if train_proposer and not proposer.trainable:
            raise ValueError(f"train_proposer=True but {type(proposer).__name__} cannot be trained")
        self.train_proposer = train_proposer
        self.train_classifier = train_classifier and classifier is not None
        if not train_proposer:  # a trained proposer keeps its own freezing choices
            self.proposer.requires_grad_(False)
        if classifier is not None and not self.train_classifier:
            classifier.requires_grad_(False)
        self.metrics = nn.ModuleDict({name: self._new_metrics() for name in self.variant_names})
        self.point_accuracy = PointAccuracy(dataset_info.num_classes, dataset_info.thing_mask())
        self.pipeline = TwoStagePipeline(
            proposer, classifier, dataset_info.num_classes, dataset_info.thing_mask(), self.tasks,
            tuple(self.variant_names), inference, point_no_object=self.point_supervision.no_object,
        )
        self.test_results: dict[str, float] = {}  # the last test's metrics
        self.skipped_nonfinite = 0  # training steps skipped for a non-finite loss (this process)
        self.reinit_heads_on_mismatch = reinit_heads_on_mismatch

    # ------------------------------------------------------------------ set-up
    def _new_metrics(self) -> nn.Module:
        from vitp.metrics import SegmentationMetrics

        return SegmentationMetrics(self.dataset_info)

    @property
    def main_variant(self) -> Variant:
        return "vitp" if self.classifier is not None else "proposer"

    @property
    def variant_names(self) -> list[Variant]:
        names: list[Variant] = [self.main_variant]
        if self.classifier is not None and self.evaluation.proposer_classes and not self.proposer.class_agnostic:
            names.append("proposer")
        if self.evaluation.oracle_classes:
            names.append("oracle")
        return names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # class-count mismatches: a clear error or fresh heads. validate / test / predict never
        # re-initialise; without a trainer (``load_from_checkpoint`` in Python, e.g. to fine-tune next)
        # the option decides; ``vitp.Segmenter`` refuses by itself
        stage = self.trainer.state.fn if self._trainer is not None else None
        reconcile_checkpoint(self, checkpoint, self.dataset_info.num_classes, self.reinit_heads_on_mismatch,
                             fitting=stage in (None, "fit"), resuming_fit=stage == "fit")
        self.skipped_nonfinite = int(checkpoint.get("vitp_counters", {}).get("skipped_nonfinite", 0))

    def train(self, mode: bool = True) -> "ViTPModule":
        """Frozen parts stay in eval mode (no dropout, frozen norm statistics)."""
        super().train(mode)
        if mode and not self.train_proposer:
            self.proposer.eval()
        if mode and self.classifier is not None and not self.train_classifier:
            self.classifier.eval()
        return self

    # ------------------------------------------------------------------ inference
    def predict_batch(self, batch: Batch, score_threshold: float | None = None,
                      max_image_side: int | None | str = "config",
                      variants: tuple[Variant, ...] | None = None) -> dict[Variant, list[Prediction]]:
        """``variants``' predictions for a batch (default: the main variant; see
        ``vitp.pipeline.TwoStagePipeline``) with ``score_threshold`` / ``max_image_side``
        (default, ``None`` / ``"config"``: this module's settings)."""
        return self.pipeline(
            batch, variants=variants or (self.main_variant,),
            score_threshold=self.output.score_threshold if score_threshold is None else score_threshold,
            max_image_side=self.output.max_image_side if max_image_side == "config" else max_image_side,
        ).predictions

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        check_skip_supported(self.optimization.on_nonfinite_loss, self.trainer.world_size)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        losses: dict[str, torch.Tensor] = {}
        logged: dict[str, torch.Tensor] = {}  # values to log instead of the process's own (global means)
        if self.train_classifier:
            targets = self.point_supervision(batch, self.pipeline)
            extra = {} if targets.masks is None else {"point_masks": targets.masks}
            logits = self.classifier(batch.images, targets.points, batch.valid_tensor(), **extra)
            losses["point_ce"], logged["point_ce"] = self._point_ce(logits, targets.labels)
        if self.train_proposer:
            proposals = self.proposer(batch.images, "panoptic", batch.targets)
            for name, value in self.proposer.loss(proposals, batch.targets).items():
                if value.requires_grad or name == "loss":
                    losses[f"proposer_{name}" if name != "loss" else "proposer_loss"] = value
        if not losses:
            raise ValueError("nothing to train: set train_classifier or train_proposer")
        total = losses.get("point_ce", 0.0) + losses.get("proposer_loss", 0.0)
        finite = bool(torch.isfinite(total))
        if not finite and self.optimization.on_nonfinite_loss == "stop":
            raise NonFiniteLossError(nonfinite_message(self, batch_idx, losses) + "; set "
                                     "model.init_args.optimization.on_nonfinite_loss=skip to skip such batches")
        if not finite:
            self.skipped_nonfinite += 1
            warnings.warn(f"skipping the optimizer step: {nonfinite_message(self, batch_idx, losses)}", RuntimeWarning)
        if self.optimization.on_nonfinite_loss == "skip":
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch))
        if not finite:
            return None
        logged_total = logged.get("point_ce", losses.get("point_ce", 0.0)) + losses.get("proposer_loss", 0.0)
        self.log("train/loss", logged_total, prog_bar=True, batch_size=len(batch))
        for name, value in losses.items():
            self.log(f"train/{name}", logged.get(name, value), batch_size=len(batch))
        return total

    def _point_ce(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the labelled points of the *global* batch, and its detached value
        to log. Under DDP each process divides its sum by the point count of all processes (times
        their number, as DDP averages the gradients), so 2 processes x b images train like 1 process
        x 2b images whatever the point counts per process. No labelled point at all gives 0/0 = NaN
        (a non-finite loss, see ``on_nonfinite_loss``)."""
        labels = labels.flatten()
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=-1, reduction="sum")
        count = (labels != -1).sum().to(total.dtype)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            loss = total / count
            return loss, loss.detach()
        sums = self.trainer.strategy.reduce(torch.stack([total.detach(), count]), reduce_op="sum")
        return total / (sums[1] / world), sums[0] / sums[1]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's global RNG from (run seed, epoch, batch, rank): whatever the model or a loss
        draws (dropout, a proposer loss's point sampling) is the same in a run resumed from a
        checkpoint as in the uninterrupted run (the data side: ``vitp.data.loader``)."""
        from vitp.data.loader import mix_seed, run_seed

        torch.manual_seed(mix_seed("step", run_seed(), self.current_epoch, batch_idx, self.global_rank))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vitp_counters"] = {"skipped_nonfinite": self.skipped_nonfinite}
        checkpoint.update(checkpoint_extras(self.dataset_info))  # the label space

    def configure_callbacks(self) -> list[L.Callback]:
        """Callbacks every run of this module gets (``vitp.callbacks``): skipped-sample logging, the
        run's record in its checkpoints, and with ``output.export_dir`` the files of test and predict."""
        from vitp.callbacks import PredictionFiles, SkippedSamplesLogger, TrainingRecord

        files = [PredictionFiles(self.output.background_writing)] if self.output.export_dir else []
        return [SkippedSamplesLogger(), TrainingRecord()] + files

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch) -> PipelineOutput:
        supervised = self.classifier is not None and batch.points is not None
        needs_masks = supervised and self.pipeline.classifier_needs_masks
        extra_masks = ground_truth_point_masks(batch, batch.points) if needs_masks else None
        out = self.pipeline(batch, extra_points=batch.points if supervised else None, extra_point_masks=extra_masks)
        if out.extra_point_logits is not None:
            self.point_accuracy.update(out.extra_point_logits, batch.point_labels)
        for name, preds in out.predictions.items():
            self.metrics[name].update(preds, batch.targets)
        return out

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> PipelineOutput:
        """The batch's predictions of every variant (``vitp.callbacks.PredictionFiles`` writes the main
        variant's when ``output.export_dir`` is set)."""
        return self._eval_step(batch)

    def _log_metrics(self, stage: str) -> dict[str, float]:
        results = self.point_accuracy.compute_and_reset()
        for key, value in results.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "point_acc")
        for name in self.variant_names:
            values = self.metrics[name].compute()
            self.metrics[name].reset()
            suffix = "" if name == self.main_variant else f"_{name}"
            for key, value in values.items():
                results[f"{key}{suffix}"] = float(value)
                self.log(f"{stage}/{key}{suffix}", float(value), prog_bar=(suffix == "" and key == "pq"),
                         sync_dist=False)
        return results

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics("test")  # metrics.json of PredictionFiles

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Prediction]:
        """The main variant's predictions (``vitp.callbacks.PredictionFiles`` writes them when
        ``output.export_dir`` is set; ``vitp predict`` then keeps none in memory)."""
        return self.predict_batch(batch)[self.main_variant]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from vitp.optim import build_optimizer

        return build_optimizer(self, self.optimization, self.trainer.estimated_stepping_batches)
