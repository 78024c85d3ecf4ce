"""The LightningModule: wiring, losses, optimisation, evaluation and logging.

About 390 lines because its ``__init__`` is the documented, typed surface of every run's ``model:``
section (LightningCLI builds ``--help`` from it); inference lives in ``pipeline.py``, proposal
targets in ``proposal_points.py``, post-processing in ``postprocess.py``, files in ``export.py``.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vitp.checkpoint_heads import checkpoint_extras, reconcile_checkpoint
from vitp.nonfinite import NonFiniteLossError, check_skip_supported, nonfinite_message
from vitp.pipeline import TwoStagePipeline
from vitp.classifiers.glimpse import PointMasks
from vitp.proposal_points import (ground_truth_point_masks, matched_proposal_index, point_components,
                                  proposal_point_targets, valid_region_logits)
from vitp.postprocess import PostProcessConfig
from vitp.proposers.base import TASKS, MaskProposer
from vitp.structures import Batch, DatasetInfo, Prediction

Task = Literal["panoptic", "semantic", "instance"]


class ViTPModule(L.LightningModule):
    """Mask proposer + optional ViT-P point classifier, trained and evaluated end to end.

    Training optimises the point classifier with cross-entropy on sampled points
    (``train_classifier``) and/or the proposer with its own loss (``train_proposer``); frozen parts
    stay in eval mode. Validation and test run every task in ``tasks`` and log PQ / mIoU / AP for
    the main variant (``vitp`` when a classifier is set, else ``proposer``) under ``val/pq``...,
    and for the other variants with a suffix (``val/pq_proposer``, ``val/pq_oracle``).

    Args:
        proposer: the mask proposer.
        classifier: the point classifier (ViT-P); None evaluates the proposer alone.
        dataset_info: label space, linked from the data module.
        tasks: tasks to post-process and evaluate.
        fusion_alpha: weight of the point classifier in the geometric ensemble (1 = alone).
        inference_top_k: points per proposal at inference (logits averaged).
        inference_point_rule: which point(s) of each proposal the classifier reads at inference
            (``vitp.point_rules``): ``argmax`` of the mask logits (the reference, default),
            ``interior`` (distance-transform maximum), ``centroid`` (snapped into the mask) or
            ``random`` (a mask cell; seeded). Training points are not affected.
        train_proposer: optimise the proposer with its own loss.
        train_classifier: optimise the point classifier.
        evaluate_variants: also evaluate the proposer's own classes when a classifier is set.
        evaluate_oracle_classes: also evaluate the proposer's masks with ground-truth classes.
        keep_rule: which panoptic segment candidates are kept: ``objectness`` (the object
            probability exceeds ``keep_threshold``, whatever the class confidence) or ``reference``
            (Mask2Former / ViT-P: the top class probability exceeds ``object_mask_threshold``);
            see ``vitp.postprocess.PostProcessConfig``.
        keep_threshold: object probability above which a segment is kept (``objectness`` rule).
        object_mask_threshold: class-probability threshold of the ``reference`` rule.
        no_object_points: also train the classifier on the frozen proposer's own proposals: each
            proposal's inference point, labelled with the class of the ground-truth segment it
            matches (IoU >= ``no_object_iou``) or "no object". The classifier gets a K+1-th
            "no object" output whose probability is fused with the proposer's objectness.
        no_object_iou: IoU with a ground-truth segment for a proposal to count as that segment.
        train_mask_stride: for a mask-aware classifier (``point_glimpse_masks``), the ground-truth
            masks it reads in training are drawn as a proposer with this mask cell size would draw
            them (``vitp.proposal_points.coarsen_masks``; Mask2Former: 4), so the outlines it learns
            look like the proposals it classifies at test time. 1 = exact masks.
        point_mask_components: a mask-aware classifier reads each proposal (at test time, and for the
            proposal points in training) cut to its connected part under the proposal's point, so
            stray pixels do not stretch the segment's box (see ``TwoStagePipeline``).
        train_mask_jitter: for a mask-aware classifier, the probability that each ground-truth mask
            it reads in training gets proposer-like errors (coarser, grown or shrunk, shifted; see
            ``vitp.proposal_points.jitter_masks``), so imperfect proposals at test time still show
            their segment's class. 0 = never.
        train_on_proposal_masks: with ``no_object_points`` and a mask-aware classifier, ground-truth
            points on the images the proposer runs on read the mask of the proposal that matches
            their segment (IoU >= ``no_object_iou``) instead of the exact one: the outline they
            will read at test time (see ``vitp.proposal_points.matched_proposal_index``).
        fuse_objectness: with ``no_object_points``, fuse the classifier's objectness with the
            proposer's (False: keep the proposer's, the reference fusion; an ablation switch).
        no_object_images: the proposer runs on the first this many images of each training batch
            (None = all): bounds the extra cost of ``no_object_points``; the other images
            contribute only their sampled points.
        overlap_threshold: see ``vitp.postprocess.PostProcessConfig``.
        topk_instances: see ``vitp.postprocess.PostProcessConfig``.
        optimizer: ``adamw`` (with layer-wise lr decay) or ``sgd`` (the reference recipe).
        lr: base learning rate.
        weight_decay: weight decay (not applied to norms, biases, tokens, position embeddings).
        momentum: SGD momentum.
        point_embed_lr: learning rate of the point-position embedding (reference: 1e-2).
        layer_decay: layer-wise lr decay of the classifier's ViT blocks (1 = none).
        warmup_steps: linear warm-up steps before the cosine decay.
        export_dir: write predictions (and metrics) here during test and predict (``predict`` also
            writes one JSON per image, ``segments/<stem>.json``; see ``vitp.export``).
        export_overlays: with ``export_dir``, ``predict`` also writes overlays on the images
            (coloured segments, outlines, class names).
        score_threshold: ``predict`` (and ``vitp.Segmenter``) keeps only panoptic segments and
            instances scoring at least this (``vitp.postprocess.PostProcessConfig``); validation and
            test keep all (AP needs the low-scoring instances too).
        max_image_side: ``predict`` post-processes images whose long side is larger at this size and
            maps the results back to the original size (memory and time stay those of this size);
            None: always at the original size. Validation and test: always the original size.
        on_nonfinite_loss: a NaN / infinite training loss ``stop``s the run with an error naming the
            global step, epoch, batch and loss terms, or (``skip``, single process only) skips that
            batch's optimizer step with a warning, counted in ``train/skipped_nonfinite``
            (see ``vitp.nonfinite``).
        reinit_heads_on_mismatch: loading a checkpoint (``--ckpt_path``) whose class-sized layers
            (classifier head, proposer class layers) do not fit the data's label space keeps those
            layers' fresh initialisation, with a warning, instead of failing; never in ``validate``,
            ``test`` or ``predict`` (see ``vitp.checkpoint_heads``).
    """

    def __init__(
        self,
        proposer: MaskProposer,
        classifier: nn.Module | None = None,
        dataset_info: DatasetInfo | None = None,
        tasks: list[Task] | None = None,
        fusion_alpha: float = 0.4,
        inference_top_k: int = 1,
        inference_point_rule: Literal["argmax", "interior", "centroid", "random"] = "argmax",
        keep_rule: Literal["objectness", "reference"] = "reference",
        keep_threshold: float = 0.5,
        no_object_points: bool = False,
        no_object_iou: float = 0.5,
        train_mask_stride: int = 1,
        no_object_images: int | None = 4,
        train_on_proposal_masks: bool = False,
        train_mask_jitter: float = 0.0,
        point_mask_components: bool = True,
        fuse_objectness: bool = True,
        train_proposer: bool = False,
        train_classifier: bool = True,
        evaluate_variants: bool = True,
        evaluate_oracle_classes: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        topk_instances: int = 100,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        point_embed_lr: float | None = None,
        layer_decay: float = 1.0,
        warmup_steps: int = 0,
        export_dir: str | None = None,
        export_overlays: bool = True,
        score_threshold: float = 0.0,
        max_image_side: int | None = 1333,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
        reinit_heads_on_mismatch: bool = False,
    ) -> None:
        super().__init__()
        if dataset_info is None:
            raise ValueError("ViTPModule needs dataset_info (linked from the data module by `vitp`)")
        # Settings live in plain attributes, not save_hyperparameters(): LightningCLI lets a
        # checkpoint's hyper-parameters override the command line, which would silently ignore
        # e.g. `vitp test --ckpt_path X --model.init_args.export_dir D`. The config decides.
        self.hp = SimpleNamespace(
            fusion_alpha=fusion_alpha, inference_top_k=inference_top_k, evaluate_variants=evaluate_variants,
            evaluate_oracle_classes=evaluate_oracle_classes, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, momentum=momentum, point_embed_lr=point_embed_lr,
            layer_decay=layer_decay, warmup_steps=warmup_steps, export_dir=export_dir,
            export_overlays=export_overlays, score_threshold=score_threshold, max_image_side=max_image_side,
        )
        self.proposer = proposer
        self.classifier = classifier
        self.dataset_info = dataset_info
        if no_object_points and classifier is None:
            raise ValueError("no_object_points=True needs a classifier")
        self.no_object_points = no_object_points
        self.no_object_iou = no_object_iou
        self.train_mask_stride = int(train_mask_stride)
        self.no_object_images = no_object_images
        if train_on_proposal_masks and not (no_object_points and self.classifier_needs_masks):
            raise ValueError("train_on_proposal_masks=True needs no_object_points=True and a mask-aware classifier "
                             "(PointViT(point_glimpse_masks=True))")
        self.train_on_proposal_masks = train_on_proposal_masks
        if not 0.0 <= train_mask_jitter <= 1.0:
            raise ValueError(f"train_mask_jitter is a probability in [0, 1], got {train_mask_jitter}")
        self.train_mask_jitter = train_mask_jitter
        if classifier is not None and hasattr(classifier, "set_num_classes"):
            classifier.set_num_classes(dataset_info.num_classes + int(no_object_points))
        self.tasks = tuple(tasks or TASKS)
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; expected some of {TASKS}")
        self.postprocess_config = PostProcessConfig(
            object_mask_threshold, overlap_threshold, topk_instances, keep_rule, keep_threshold
        )
        self.register_buffer("is_thing", dataset_info.thing_mask(), persistent=False)
        if train_proposer and not proposer.trainable:
            raise ValueError(f"train_proposer=True but {type(proposer).__name__} cannot be trained")
        if train_classifier and classifier is None:
            train_classifier = False
        self.train_proposer = train_proposer
        self.train_classifier = train_classifier
        if not train_proposer:  # a trained proposer keeps its own freezing choices
            self.proposer.requires_grad_(False)
        if classifier is not None and not train_classifier:
            classifier.requires_grad_(False)
        self.metrics = nn.ModuleDict({name: self._new_metrics() for name in self.variant_names})
        # point accuracy in percent: micro (all points), and per class for the macro means over all,
        # thing and stuff classes
        self.point_accuracy = nn.ModuleDict({
            average: MulticlassAccuracy(dataset_info.num_classes, average=average, ignore_index=-1)
            for average in ("micro", "none")
        })
        self.pipeline = TwoStagePipeline(
            proposer, classifier, dataset_info.num_classes, dataset_info.thing_mask(), self.tasks,
            tuple(self.variant_names), fusion_alpha, no_object_points, inference_top_k,
            self.postprocess_config, fuse_objectness, point_mask_components, point_rule=inference_point_rule,
        )
        self._exporter: Any = None
        self._overlays: Any = None
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_nonfinite = 0  # training steps skipped for a non-finite loss (this process)
        self.reinit_heads_on_mismatch = reinit_heads_on_mismatch

    # ------------------------------------------------------------------ set-up
    def _new_metrics(self) -> nn.Module:
        from vitp.metrics import SegmentationMetrics

        return SegmentationMetrics(self.dataset_info)

    @property
    def main_variant(self) -> str:
        return "vitp" if self.classifier is not None else "proposer"

    @property
    def variant_names(self) -> list[str]:
        names = [self.main_variant]
        if self.classifier is not None and self.hp.evaluate_variants and not self.proposer.class_agnostic:
            names.append("proposer")
        if self.hp.evaluate_oracle_classes:
            names.append("oracle")
        return names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reconcile_checkpoint(self, checkpoint)  # class-count mismatches: a clear error or fresh heads
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
                      variants: tuple[str, ...] | None = None) -> dict[str, list[Prediction]]:
        """``variants``' predictions for a batch (default: the main variant; see
        ``vitp.pipeline.TwoStagePipeline``) with ``score_threshold`` / ``max_image_side``
        (default, ``None`` / ``"config"``: this module's settings)."""
        return self.pipeline(
            batch, variants=variants or (self.main_variant,),
            score_threshold=self.hp.score_threshold if score_threshold is None else score_threshold,
            max_image_side=self.hp.max_image_side if max_image_side == "config" else max_image_side,
        ).predictions

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        check_skip_supported(self)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        losses: dict[str, torch.Tensor] = {}
        logged: dict[str, torch.Tensor] = {}  # values to log instead of the process's own (global means)
        if self.train_classifier:
            if batch.points is None:
                raise ValueError("training the classifier needs point supervision: set data.point_sampler")
            points, labels, point_masks = batch.points, batch.point_labels, None
            if self.no_object_points:
                points, labels, point_masks = self._with_proposal_points(batch)
            elif self.classifier_needs_masks:
                point_masks = ground_truth_point_masks(batch, points, self.train_mask_stride, self.train_mask_jitter)
            extra = {} if point_masks is None else {"point_masks": point_masks}
            logits = self.classifier(batch.images, points, batch.valid_tensor(), **extra)
            losses["point_ce"], logged["point_ce"] = self._point_ce(logits, labels)
        if self.train_proposer:
            proposals = self.proposer(batch.images, "panoptic", batch.targets)
            for name, value in self.proposer.loss(proposals, batch.targets).items():
                if value.requires_grad or name == "loss":
                    losses[f"proposer_{name}" if name != "loss" else "proposer_loss"] = value
        if not losses:
            raise ValueError("nothing to train: set train_classifier or train_proposer")
        total = losses.get("point_ce", 0.0) + losses.get("proposer_loss", 0.0)
        finite = bool(torch.isfinite(total))
        if not finite and self.on_nonfinite_loss == "stop":
            raise NonFiniteLossError(nonfinite_message(self, batch_idx, losses) + "; set "
                                     "model.init_args.on_nonfinite_loss=skip to skip such batches")
        if not finite:
            self.skipped_nonfinite += 1
            warnings.warn(f"skipping the optimizer step: {nonfinite_message(self, batch_idx, losses)}", RuntimeWarning)
        if self.on_nonfinite_loss == "skip":
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
        checkpoint.update(checkpoint_extras(self))  # label space, training data, last metrics

    def _log_skipped_samples(self, stage: str) -> None:
        """``{stage}/skipped_samples``: samples the data module skipped (``on_bad_sample=skip``),
        summed over processes."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "on_bad_sample", "error") != "skip":
            return
        count = float(datamodule.skipped_samples.get(stage, 0))
        self.log(f"{stage}/skipped_samples", count, sync_dist=True, reduce_fx="sum")

    def on_train_epoch_end(self) -> None:
        self._log_skipped_samples("train")

    @property
    def classifier_needs_masks(self) -> bool:
        """The classifier reads each point's segment mask (``PointViT(point_glimpse_masks=True)``)."""
        return bool(getattr(self.classifier, "needs_point_masks", False))

    def _with_proposal_points(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, PointMasks | None]:
        """The batch's sampled points followed by one point per proposal of the frozen proposer on
        the first ``no_object_images`` images (labelled with the matched class or "no object", see
        ``proposal_point_targets``); the other images get padding (label -1) there. With a
        mask-aware classifier also the mask of every point: its ground-truth segment, or the
        proposal (binarised at logit 0, on the valid region) for proposal points; else None."""
        n = len(batch) if self.no_object_images is None else min(len(batch), self.no_object_images)
        sub = Batch(batch.images[:n], batch.targets[:n])
        with torch.no_grad():
            proposals = self.pipeline.propose(sub, "panoptic")
            region = [valid_region_logits(proposals, sub, i) for i in range(n)]
            points, labels = proposal_point_targets(proposals, sub, self.dataset_info.num_classes, self.no_object_iou,
                                                    region)
        pad = len(batch) - n
        points = torch.cat([points, points.new_zeros((pad, *points.shape[1:]))])
        labels = torch.cat([labels, labels.new_full((pad, labels.shape[1]), -1)])
        all_points = torch.cat([batch.points, points], 1)
        masks = None
        if self.classifier_needs_masks:
            gt = ground_truth_point_masks(batch, batch.points, self.train_mask_stride, self.train_mask_jitter)
            stacks, gt_index = list(gt.masks), gt.index
            q = points.shape[1]
            extra = torch.full((len(batch), q), -1, dtype=torch.long, device=points.device)
            for i in range(n):
                pred = region[i] > 0
                if self.pipeline.point_mask_components:
                    pred = point_components(pred, points[i])
                offset = len(stacks[i])
                extra[i] = offset + torch.arange(q, device=points.device)
                if self.train_on_proposal_masks:
                    h, w = batch.targets[i].valid_size
                    exact = batch.targets[i].masks[:, :h, :w]
                    gt_index[i] = matched_proposal_index(gt_index[i], pred, exact, offset, self.no_object_iou)
                stacks[i] = torch.cat([stacks[i], pred.to(stacks[i].device)])
            masks = PointMasks(stacks, torch.cat([gt_index, extra], 1))
        return all_points, torch.cat([batch.point_labels, labels], 1), masks

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str) -> None:
        supervised = self.classifier is not None and batch.points is not None
        extra_masks = ground_truth_point_masks(batch, batch.points) if supervised and self.classifier_needs_masks else None
        out = self.pipeline(batch, extra_points=batch.points if supervised else None, extra_point_masks=extra_masks)
        if out.extra_point_logits is not None:
            num_classes = self.dataset_info.num_classes
            preds = out.extra_point_logits[..., :num_classes].argmax(-1).flatten()
            for metric in self.point_accuracy.values():
                metric.update(preds, batch.point_labels.flatten())
        for name, preds in out.predictions.items():
            self.metrics[name].update(preds, batch.targets)
        if stage == "test" and self._exporter is not None:
            for pred, target in zip(out.predictions[self.main_variant], batch.targets):
                self._exporter.write(pred, target)
        if stage == "test" and getattr(self, "_report", None) is not None:
            self._report.add_batch(out, batch)  # report.html, see vitp.report

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_metrics(self, stage: str) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.point_accuracy["micro"].update_called:
            results["point_acc"] = 100.0 * float(self.point_accuracy["micro"].compute())
            per_class = 100.0 * self.point_accuracy["none"].compute().cpu()
            with self.point_accuracy["none"].sync_context():  # classes seen by any process (DDP)
                seen = self.point_accuracy["none"].tp.cpu() + self.point_accuracy["none"].fn.cpu() > 0
            thing = self.dataset_info.thing_mask()
            for key, select in (("macro", seen), ("thing", seen & thing), ("stuff", seen & ~thing)):
                if select.any():
                    results[f"point_acc_{key}"] = float(per_class[select].mean())
            for key in [k for k in results if k.startswith("point_acc")]:
                self.log(f"{stage}/{key}", results[key], prog_bar=key == "point_acc")
            for metric in self.point_accuracy.values():
                metric.reset()
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
        self._log_skipped_samples("val")

    def on_test_epoch_start(self) -> None:
        self._exporter = self._make_exporter()
        if self._exporter is not None:
            from vitp.report import ReportCollector

            self._report = ReportCollector(self.dataset_info)

    def on_test_epoch_end(self) -> None:
        results = self._log_metrics("test")
        self._log_skipped_samples("test")
        if self._exporter is not None:
            self._exporter.finalize(results)
            self._exporter = None
        if getattr(self, "_report", None) is not None:
            if self.trainer.is_global_zero:  # under DDP: the images of rank 0
                self._report.write(self.hp.export_dir, results)
            self._report = None

    def _make_exporter(self, per_image_json: bool = False) -> Any:
        if not self.hp.export_dir:
            return None
        from vitp.export import PredictionExporter

        return PredictionExporter(self.hp.export_dir, self.dataset_info, per_image_json=per_image_json)

    def _predict_image_reader(self) -> Any:
        """The predict dataset's image reader (``read_image``: your own images are read with their
        EXIF orientation applied), so overlays show the pixels the predictions refer to."""
        loaders = getattr(self.trainer, "predict_dataloaders", None) if self._trainer is not None else None
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            reader = getattr(getattr(loader, "dataset", None), "read_image", None)
            if reader is not None:
                return reader
        return None

    def on_predict_epoch_start(self) -> None:
        self._exporter = self._make_exporter(per_image_json=True)
        if self._exporter is not None and self.hp.export_overlays:
            from vitp.visualize import OverlayWriter

            self._overlays = OverlayWriter(self.hp.export_dir, self.dataset_info, self._predict_image_reader())

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Prediction] | None:
        """The main variant's predictions; with ``export_dir`` they are written there (PNGs, JSON,
        overlays) and None is returned, so a large folder does not pile up in memory."""
        predictions = self.predict_batch(batch)[self.main_variant]
        for writer in (self._exporter, self._overlays):
            if writer is not None:
                for pred, target in zip(predictions, batch.targets):
                    writer.write(pred, target)
        return None if self._exporter is not None else predictions

    def on_predict_epoch_end(self) -> None:
        if self._exporter is not None:
            self._exporter.finalize(None)
        self._exporter = self._overlays = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from vitp.optim import build_param_groups

        hp = self.hp
        groups = build_param_groups(
            self, base_lr=hp.lr, weight_decay=hp.weight_decay,
            point_embed_lr=hp.point_embed_lr, layer_decay=hp.layer_decay,
        )
        if not groups:
            raise ValueError("no trainable parameters")
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total - 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
