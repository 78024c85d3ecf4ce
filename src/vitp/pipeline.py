"""The two-stage inference path, owned here once: propose -> points -> classify -> fuse -> post-process.

:class:`TwoStagePipeline` is used by validation, test and predict alike. It evaluates several
*variants* from the same proposals in one pass:

* ``proposer``: the proposer's own classes (skipped for class-agnostic proposers);
* ``vitp``: the point classifier's classes fused with the proposer's (when a classifier is given);
* ``oracle``: each proposal takes the class of the ground-truth segment it overlaps best
  (IoU >= 0.5, else "no object"), the upper bound of any re-classifier on these masks.

The point classifier runs once per batch: the inference points of every task's proposals (and
any extra points, e.g. the evaluation's supervision points) go through one call, so the patch
tokens are encoded once. With one-way attention each point's logits do not depend on the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vitp.classifiers.base import PointClassifier
from vitp.cpu_ops import above
from vitp.fusion import fuse_class_probs
from vitp.point_rules import select_points_by_rule
from vitp.postprocess import PostProcessConfig, UpsampledLogits, infer, resize_prediction
from vitp.proposal_geometry import (ProposalPick, capped_size, lazy_logits, match_segments,
                                    present_proposals, proposal_point_masks, valid_region_logits)
from vitp.settings import InferenceSettings
from vitp.structures import VARIANTS, Batch, PointLogits, PointMasks, Prediction, Proposals, Target, Variant


def oracle_class_probs(mask_logits: torch.Tensor | UpsampledLogits, target: Target, num_classes: int) -> torch.Tensor:
    """``float[Q, K + 1]``: one-hot ground-truth class of the best-overlapping segment.

    ``mask_logits`` are one image's proposals at the original size; crowd segments count as
    matches too (a proposal covering a crowd region is not wrong).
    """
    q = mask_logits.shape[0]
    binary = mask_logits.binary() if isinstance(mask_logits, UpsampledLogits) else above(mask_logits)
    probs = torch.zeros((q, num_classes + 1), dtype=torch.float, device=binary.device)
    probs[:, -1] = 1.0
    n = len(target.labels)
    if q == 0 or n == 0:
        return probs
    gt_index = target.segments.flatten()
    gt = torch.zeros((n, gt_index.numel()), dtype=torch.bool, device=binary.device)
    valid = gt_index >= 0
    gt[gt_index[valid], valid.nonzero()[:, 0]] = True
    best_iou, best = match_segments(binary.flatten(1), gt)
    matched = best_iou >= 0.5
    probs[matched, -1] = 0.0
    probs[matched, target.labels[best[matched]]] = 1.0
    return probs


@dataclass
class PipelineOutput:
    """What one pass over a batch yields.

    predictions: variant name -> one ``Prediction`` per image (every requested task filled).
    extra_point_logits: the classifier's logits of the ``extra_points`` passed in, or None.
    """

    predictions: dict[Variant, list[Prediction]] = field(default_factory=dict)
    extra_point_logits: torch.Tensor | None = None


class TwoStagePipeline:
    """Proposer + optional point classifier -> post-processed predictions of each variant.

    Not an ``nn.Module``: it holds references to the modules its owner registers (so checkpoint keys
    stay ``proposer.*`` / ``classifier.*``) and the inference settings.

    Args:
        proposer: the mask proposer.
        classifier: the point classifier, or None (proposer alone).
        num_classes: K of the dataset.
        is_thing: ``bool[K]``.
        tasks: tasks to post-process.
        variants: which of :data:`VARIANTS` to produce.
        settings: fusion, inference points and post-processing thresholds.
        point_no_object: the classifier was trained with a no-object class (its last logit).
        point_seed: seed of the ``random`` point rule.
    """

    def __init__(
        self,
        proposer: nn.Module,
        classifier: PointClassifier | None,
        num_classes: int,
        is_thing: torch.Tensor,
        tasks: tuple[str, ...],
        variants: tuple[Variant, ...],
        settings: InferenceSettings = InferenceSettings(),
        point_no_object: bool = False,
        point_seed: int = 0,
    ) -> None:
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; expected some of {VARIANTS}")
        self.proposer = proposer
        self.classifier = classifier
        self.num_classes = num_classes
        self.is_thing = is_thing
        self.tasks = tasks
        self.variants = variants
        self.settings = settings
        self.point_no_object = point_no_object
        self.point_seed = point_seed

    @property
    def config(self) -> PostProcessConfig:
        """The post-processing thresholds of ``settings`` (derived, so replacing ``settings`` updates them)."""
        return self.settings.postprocess()

    @property
    def classifier_needs_masks(self) -> bool:
        """The classifier reads each point's segment mask (``PointClassifier.needs_point_masks``)."""
        return self.classifier is not None and self.classifier.needs_point_masks

    def task_groups(self) -> list[tuple[str, ...]]:
        """Tasks that share one proposer pass (each task alone for task-conditioned proposers)."""
        if self.proposer.task_conditioned:
            return [(task,) for task in self.tasks]
        return [self.tasks]

    def propose(self, batch: Batch, task: str) -> Proposals:
        targets = batch.targets if self.proposer.needs_targets else None
        return self.proposer(batch.images, task, targets)

    def classify(
        self, batch: Batch, proposals: list[Proposals], extra_points: torch.Tensor | None = None,
        extra_point_masks: PointMasks | None = None, views: list[list[UpsampledLogits]] | None = None,
    ) -> tuple[list[PointLogits], torch.Tensor | None]:
        """Point logits per proposal set (``PointLogits``: ``float[B, Q, C]``), and those of
        ``extra_points`` — all from one classifier call (one patch pass). With
        ``settings.skip_empty_proposals``, only the proposals with a pixel (:func:`present_proposals`)
        get a point. A mask-aware classifier also gets each point's mask: its proposal (binarised
        at logit 0) or, for an extra point, ``extra_point_masks``. ``views``: per proposal set, per
        image, the logits the post-processing will read (:meth:`logit_views`); where one is seen at
        the valid region's size, the masks are read from it, so that upsampling is done once for both."""
        b, k = len(batch), self.settings.top_k
        frame = tuple(batch.images.shape[-2:])
        valid = batch.valid_tensor()
        picks = self.picks(batch, proposals)
        chosen = [p if pick is None else p.take(pick.index) for p, pick in zip(proposals, picks)]
        chunks = [
            select_points_by_rule(p.mask_logits, valid, frame, self.settings.point_rule, k, p.valid_sizes,
                                  self.point_seed).reshape(b, -1, 2)
            for p in chosen
        ]
        if extra_points is not None:
            chunks.append(extra_points.to(batch.images.device, torch.float32))
        extra = {}
        if self.classifier_needs_masks:
            if extra_points is not None and extra_point_masks is None:
                raise ValueError("a mask-aware classifier needs extra_point_masks for the extra points")
            own = proposal_point_masks(batch, chosen, chunks[: len(proposals)], k,
                                       self.settings.point_mask_components, self._regions(batch, chosen, views, picks))
            extra["point_masks"] = own if extra_point_masks is None else PointMasks.concat([own, extra_point_masks])
        points = torch.cat(chunks, dim=1)
        trunk = proposals[0].trunk if proposals else None
        if points.shape[1] == 0:  # nothing to classify (every proposal empty)
            logits = points.new_zeros(b, 0, self.num_classes + int(self.point_no_object))
        elif trunk is not None and getattr(self.classifier, "frame", "valid") == "square":
            # one trunk pass for both stages: the points read the proposer's trunk states
            cache = self.classifier.cache_from_trunk(trunk, valid, frame)
            logits = self.classifier.classify_points(cache, points, extra.get("point_masks"))
        else:
            logits = self.classifier(batch.images, points, valid, **extra)
        out, start = [], 0
        for p, pick in zip(chosen, picks):
            q = p.mask_logits.shape[1]
            per_proposal = logits[:, start : start + q * k].reshape(b, q, k, logits.shape[-1]).mean(2)
            out.append(PointLogits(per_proposal) if pick is None else pick.scatter(per_proposal))
            start += q * k
        return out, (logits[:, start:] if extra_points is not None else None)

    def picks(self, batch: Batch, proposals: list[Proposals]) -> list[ProposalPick | None]:
        """Per proposal set, the proposals the classifier reads (None: all of them, when
        ``settings.skip_empty_proposals`` is off or none is empty)."""
        if not self.settings.skip_empty_proposals:
            return [None] * len(proposals)
        present = [present_proposals(p, batch) for p in proposals]
        return [None if bool(m.all()) else ProposalPick.of(m) for m in present]

    def vitp_proposals(self, batch: Batch, proposals: list[Proposals]) -> list[Proposals] | None:
        """What ViT-P's path reads of each proposal set: each image's present proposals (padded with
        empty ones to one count); None when it reads them all (skipping off, or no proposal empty)."""
        picks = self.picks(batch, proposals)
        if all(pick is None for pick in picks):
            return None
        return [p if pick is None else p.take(pick.index, pick.real) for p, pick in zip(proposals, picks)]

    @staticmethod
    def logit_views(batch: Batch, proposals: list[Proposals],
                    max_image_side: int | None = None) -> list[list[UpsampledLogits]]:
        """Per proposal set, per image: its mask logits seen at the size the post-processing
        works at (the original size, capped at ``max_image_side``), lazily."""
        return [[lazy_logits(p, batch, i, capped_size(tuple(t.orig_size), max_image_side))
                 for i, t in enumerate(batch.targets)] for p in proposals]

    @staticmethod
    def _regions(batch: Batch, chosen: list[Proposals], views: list[list[UpsampledLogits]] | None,
                 picks: list[ProposalPick | None]) -> list[list[torch.Tensor]] | None:
        """``proposal_point_masks``' valid-region logits of the ``chosen`` proposals (each set's
        ``picks`` of those ``views`` show), taken from ``views`` where one is seen at the valid
        region's size (the same crop and resize: the same values), else computed."""
        if views is None:
            return None
        out = []
        for i, t in enumerate(batch.targets):
            per_set = []
            for p, v, pick in zip(chosen, views, picks):
                if v[i].size != tuple(t.valid_size):
                    per_set.append(valid_region_logits(p, batch, i))
                else:
                    per_set.append(v[i].full() if pick is None else v[i].full()[pick.index[i]])
            out.append(per_set)
        return out

    def variant_probs(
        self, proposals: Proposals, point_logits: PointLogits | None, variants: tuple[Variant, ...]
    ) -> dict[Variant, torch.Tensor]:
        """Class probabilities ``float[B, Q, K + 1]`` (last column = no object) of the proposer and
        ViT-P variants among ``variants``; ViT-P's are no object for the proposals the classifier
        did not read."""
        probs: dict[Variant, torch.Tensor] = {}
        if "proposer" in variants and proposals.class_logits is not None:
            probs["proposer"] = proposals.class_logits.float().softmax(-1)
        if "vitp" in variants and point_logits is not None:
            fuse_objectness = self.point_no_object and self.settings.fuse_objectness
            logits = point_logits.logits
            if self.point_no_object and not fuse_objectness:
                logits = logits[..., : self.num_classes]
            probs["vitp"] = point_logits.void_unclassified(fuse_class_probs(
                proposals.class_logits, logits, self.settings.fusion_alpha,
                mask_quality=proposals.objectness, point_no_object=fuse_objectness,
            ))
        return probs

    @torch.no_grad()
    def __call__(
        self, batch: Batch, extra_points: torch.Tensor | None = None, variants: tuple[Variant, ...] | None = None,
        extra_point_masks: PointMasks | None = None, score_threshold: float | None = None,
        max_image_side: int | None = None,
    ) -> PipelineOutput:
        """Predictions of ``variants`` (default: all configured ones) for every image of ``batch``;
        ``extra_points float[B, P, 2]`` are classified in the same classifier call (with their
        ``extra_point_masks`` when the classifier is mask-aware). ``score_threshold`` overrides the
        config's (``PostProcessConfig.score_threshold``); with ``max_image_side``, images whose long
        side is larger are post-processed at that size and the results mapped back to the original
        size (nearest neighbour)."""
        config = self.config if score_threshold is None else self.settings.postprocess(score_threshold)
        variants = self.variants if variants is None else tuple(v for v in variants if v in self.variants)
        proposals = [self.propose(batch, tasks[0]) for tasks in self.task_groups()]
        unread: list[PointLogits | None] = [None] * len(proposals)
        if self.classifier is None or ("vitp" not in variants and extra_points is None):
            return PipelineOutput(self.postprocess(batch, proposals, unread, variants, config, max_image_side))
        present = self.vitp_proposals(batch, proposals)
        if present is None:  # every proposal classified: one view of the logits for all
            views = self.logit_views(batch, proposals, max_image_side)
            point_logits, extra = self.classify(batch, proposals, extra_points, extra_point_masks, views)
            return PipelineOutput(self.postprocess(batch, proposals, point_logits, variants, config,
                                                   max_image_side, views), extra)
        # ViT-P reads only the proposals with a pixel, from the points to the post-processing (the
        # others are no object for it); the proposer's and oracle classes read them all
        views = self.logit_views(batch, present, max_image_side)
        point_logits, extra = self.classify(batch, present, extra_points, extra_point_masks, views)
        predictions = {} if "vitp" not in variants else \
            self.postprocess(batch, present, point_logits, ("vitp",), config, max_image_side, views)
        others = tuple(v for v in variants if v != "vitp")
        if others:
            predictions.update(self.postprocess(batch, proposals, unread, others, config, max_image_side))
        return PipelineOutput({v: predictions[v] for v in variants if v in predictions}, extra)

    def postprocess(
        self, batch: Batch, proposals: list[Proposals], point_logits: list[PointLogits | None],
        variants: tuple[Variant, ...], config: PostProcessConfig | None = None, max_image_side: int | None = None,
        views: list[list[UpsampledLogits]] | None = None,
    ) -> dict[Variant, list[Prediction]]:
        """Predictions of ``variants`` from given proposals (one per task group) and their point
        logits (``classify``; None where there are none): class probabilities per variant, then the
        post-processing of every image at its original size (or capped at ``max_image_side`` and
        mapped back). ``views``: :meth:`logit_views` of the same ``max_image_side``, when the caller
        has them (each is released once its image is done). ``__call__`` is ``propose`` +
        ``classify`` + this."""
        config = self.config if config is None else config
        views = self.logit_views(batch, proposals, max_image_side) if views is None else views
        # per variant, per image: task -> result, filled group by group
        results: dict[Variant, list[dict[str, object]]] = {}
        for tasks, props, logits, group_views in zip(self.task_groups(), proposals, point_logits, views):
            probs = self.variant_probs(props, logits, variants)
            for i, target in enumerate(batch.targets):
                mask_logits, group_views[i] = group_views[i], None  # kept upsampled logits go with it
                size = mask_logits.size
                for name in variants:
                    if name == "oracle":
                        p = oracle_class_probs(mask_logits, target, self.num_classes)
                    elif name in probs:
                        p = probs[name][i]
                    else:
                        continue
                    pred = infer(mask_logits, p, self.is_thing, tasks, config)
                    if size != tuple(target.orig_size):
                        pred = resize_prediction(pred, tuple(target.orig_size))
                    per_image = results.setdefault(name, [{} for _ in batch.targets])[i]
                    per_image.update({t: pred.result(t) for t in tasks})
        return {name: [Prediction(**r) for r in per_image] for name, per_image in results.items()}
