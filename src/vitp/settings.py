"""Typed settings groups of ``ViTPModule`` (LightningCLI shows each as one nested block in
``--help`` and YAML, e.g. ``--model.init_args.inference.fusion_alpha 0.4``).

* :class:`InferenceSettings`: how proposals become predictions (fusion, inference points,
  post-processing thresholds); what ``vitp.pipeline.TwoStagePipeline`` runs.
* :class:`EvaluationSettings`: which extra variants validation and test report.
* :class:`OptimizerSettings`: the optimiser, its schedule and the non-finite-loss policy.
* :class:`OutputSettings`: files written by test and predict, and predict's own thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vitp.point_rules import PointRule, check_point_rule
from vitp.postprocess import PostProcessConfig


@dataclass(frozen=True)
class InferenceSettings:
    """From proposals to predictions.

    Args:
        fusion_alpha: weight of the point classifier in the geometric class ensemble (1 = alone;
            see ``vitp.fusion``).
        fuse_objectness: with a classifier trained on "no object" (``ProposalPoints``), fuse its
            objectness with the proposer's; False keeps the proposer's (the reference fusion).
        point_rule: which point(s) of each proposal the classifier reads (``vitp.point_rules``):
            ``argmax`` of the mask logits (the reference, default), ``interior`` (distance-transform
            maximum), ``centroid`` (snapped into the mask) or ``random`` (a mask cell; seeded).
        top_k: points per proposal (their logits averaged).
        point_mask_components: a mask-aware classifier reads each proposal cut to its connected
            part under the proposal's point, so stray pixels do not stretch the segment's box.
        keep_rule: which panoptic segment candidates are kept: ``reference`` (Mask2Former / ViT-P:
            the top class probability exceeds ``object_mask_threshold``) or ``objectness`` (the object
            probability exceeds ``keep_threshold``); see ``vitp.postprocess.PostProcessConfig``.
        keep_threshold: object probability above which a segment is kept (``objectness`` rule).
        object_mask_threshold: class-probability threshold of the ``reference`` rule.
        overlap_threshold: see ``vitp.postprocess.PostProcessConfig``.
        topk_instances: see ``vitp.postprocess.PostProcessConfig``.
        skip_empty_proposals: the classifier reads only proposals with a pixel (some mask logit
            >= -1e-6 on the image's valid region); ViT-P labels the others no object. Such a mask
            cannot become a segment or an instance at any output size; kept as a panoptic candidate
            it only takes pixels from the others (where it wins the ``score * sigmoid`` contest,
            they become void), and in the semantic map it adds its sub-0.5 mass. On the default run
            they are over half the proposals, so the classifier's cost follows the proposals that
            can be kept (False: every proposal is classified, as in the reference).
        rule_out_candidates: on large outputs, what cannot matter to a band of rows is left out
            at mask resolution (panoptic candidates and semantic classes that cannot win a pixel
            there, instance queries whose mask cannot reach it), so each band reads only the rest
            (exact; False only to measure what it saves).
    """

    fusion_alpha: float = 0.4
    fuse_objectness: bool = True
    point_rule: PointRule = "argmax"
    top_k: int = 1
    point_mask_components: bool = True
    keep_rule: Literal["objectness", "reference"] = "reference"
    keep_threshold: float = 0.5
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100
    skip_empty_proposals: bool = True
    rule_out_candidates: bool = True

    def __post_init__(self) -> None:
        check_point_rule(self.point_rule, self.top_k)
        self.postprocess()  # validates the keep rule

    def postprocess(self, score_threshold: float = 0.0) -> PostProcessConfig:
        """The post-processing thresholds, with ``score_threshold`` (0 keeps every segment)."""
        return PostProcessConfig(self.object_mask_threshold, self.overlap_threshold, self.topk_instances,
                                 self.keep_rule, self.keep_threshold, score_threshold, self.rule_out_candidates)


@dataclass(frozen=True)
class EvaluationSettings:
    """Variants validation and test report beside the main one (``vitp`` with a classifier).

    Args:
        proposer_classes: also the proposer's own classes (``*_proposer`` metrics) when a
            classifier is set (skipped for class-agnostic proposers).
        oracle_classes: also the proposer's masks with ground-truth classes (``*_oracle``).
    """

    proposer_classes: bool = True
    oracle_classes: bool = False


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser, learning-rate schedule (linear warm-up, then cosine) and non-finite losses.

    Args:
        optimizer: ``adamw`` (with layer-wise lr decay) or ``sgd`` (the reference recipe).
        lr: base learning rate.
        weight_decay: weight decay (not applied to norms, biases, tokens, position embeddings).
        momentum: SGD momentum.
        point_embed_lr: learning rate of the point-position embedding (reference: 1e-2).
        layer_decay: layer-wise lr decay of the classifier's ViT blocks (1 = none).
        warmup_steps: linear warm-up steps before the cosine decay.
        on_nonfinite_loss: a NaN / infinite training loss ``stop``s the run with an error naming the
            global step, epoch, batch and loss terms, or (``skip``, single process only) skips that
            batch's optimizer step with a warning, counted in ``train/skipped_nonfinite``
            (see ``vitp.nonfinite``).
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    point_embed_lr: float | None = None
    layer_decay: float = 1.0
    warmup_steps: int = 0
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"


@dataclass(frozen=True)
class OutputSettings:
    """Files written by ``test`` and ``predict`` (see ``vitp.export``) and predict's thresholds.

    Args:
        export_dir: write predictions (and metrics) here during test and predict (``predict`` also
            writes one JSON per image, ``segments/<stem>.json``); None writes nothing.
        overlays: with ``export_dir``, ``predict`` also writes overlays on the images (coloured
            segments, outlines, class names).
        score_threshold: ``predict`` (and ``vitp.Segmenter``) keeps only panoptic segments and
            instances scoring at least this; validation and test keep all (AP needs the
            low-scoring instances too).
        max_image_side: ``predict`` post-processes images whose long side is larger at this size
            and maps the results back to the original size (memory and time stay those of this
            size); None: always at the original size. Validation and test: always the original size.
        background_writing: ``predict`` writes the files of a batch on one background thread while
            the model runs on the next (``vitp.callbacks.PredictionFiles``; the same files, one more
            batch of predictions in memory); false writes them in the main thread, between batches.
    """

    export_dir: str | None = None
    overlays: bool = True
    score_threshold: float = 0.0
    max_image_side: int | None = 1333
    background_writing: bool = True


RENAMED: dict[str, str] = {
    **{k: f"inference.{k}" for k in ("fusion_alpha", "fuse_objectness", "point_mask_components", "keep_rule",
                                      "keep_threshold", "object_mask_threshold", "overlap_threshold",
                                      "topk_instances")},
    "inference_top_k": "inference.top_k", "inference_point_rule": "inference.point_rule",
    "evaluate_variants": "evaluation.proposer_classes", "evaluate_oracle_classes": "evaluation.oracle_classes",
    **{k: f"optimization.{k}" for k in ("optimizer", "lr", "weight_decay", "momentum", "point_embed_lr",
                                         "layer_decay", "warmup_steps", "on_nonfinite_loss")},
    "export_dir": "output.export_dir", "export_overlays": "output.overlays",
    "score_threshold": "output.score_threshold", "max_image_side": "output.max_image_side",
    "no_object_points": "point_supervision: {class_path: vitp.training.ProposalPoints}",
    "no_object_iou": "point_supervision (ProposalPoints init_args.iou)",
    "no_object_images": "point_supervision (ProposalPoints init_args.images)",
    "train_on_proposal_masks": "point_supervision (ProposalPoints init_args.read_proposal_masks)",
    "train_mask_jitter": "point_supervision (init_args.mask_jitter)",
    "train_mask_stride": "nothing (removed)",
}
"""``ViTPModule`` options before they were grouped (issue 23) -> where they live now."""

RENAMED_CLASSIFIER: dict[str, str] = {
    "point_glimpse": "glimpse.window", "point_glimpse_samples": "glimpse.samples",
    "point_glimpse_masks": "glimpse.masks", "point_glimpse_fit_box": "glimpse.fit_box",
    "point_glimpse_head": "glimpse.head",
}
"""``PointViT`` glimpse options before ``GlimpseSettings`` -> where they live now."""

RENAMED_NATIVE: dict[str, str] = {
    **{k: f"architecture.{k}" for k in ("depths", "dims", "heads", "window", "tau", "grouping_iters", "grouping",
                                         "query_init", "pos_bias")},
    **{k: f"loss.{k}" for k in ("semantic_weight", "class_weight", "mask_weight", "dice_weight", "no_object_weight",
                                 "train_num_points")},
}
"""``NativeProposer`` options before ``NativeArchitecture`` / ``NativeLossSettings`` -> where they live now
(other proposers have options of the same names: reported for the native proposer's class path only)."""

REINIT_HEAD = "reinit_head"
"""The classifier's and HF proposers' own switch before ``ViTPModule.reinit_heads_on_mismatch`` decided
for every part (issue 23): reported by :func:`renamed_options` wherever it appears."""


def _init_args(node: Any) -> dict | None:
    """``node["init_args"]`` when ``node`` is a config section with a dict there, else None."""
    args = node.get("init_args") if isinstance(node, dict) else None
    return args if isinstance(args, dict) else None


def _native_init_args(model: Any) -> dict | None:
    """The proposer's ``init_args`` of a ``model`` section when its class path is ``NativeProposer``."""
    proposer = (_init_args(model) or {}).get("proposer")
    if not isinstance(proposer, dict) or str(proposer.get("class_path", "")).rsplit(".", 1)[-1] != "NativeProposer":
        return None
    return _init_args(proposer)


def renamed_options(model: dict) -> list[str]:
    """``"old -> new"`` for every option of a config's ``model`` section that was renamed (empty
    when none): checked before parsing, so an old config gets an error saying where each option went."""
    init = _init_args(model)
    if init is None:
        return []
    found = [f"model.init_args.{k} -> model.init_args.{RENAMED[k]}" for k in init if k in RENAMED]
    for part, args, renamed in (("classifier", _init_args(init.get("classifier")), RENAMED_CLASSIFIER),
                                ("proposer", _native_init_args(model), RENAMED_NATIVE)):
        found += [f"{part}.init_args.{k} -> {part}.init_args.{renamed[k]}" for k in args or {} if k in renamed]
    for part in ("classifier", "proposer"):
        args = _init_args(init.get(part))
        if args is not None and REINIT_HEAD in args:
            found.append(f"{part}.init_args.{REINIT_HEAD} -> model.init_args.reinit_heads_on_mismatch (one switch "
                         "for every part; delete the line when it is false)")
    return found


def upgrade_pretrained_config(model: Any) -> None:
    """A pretrained folder's ``model`` section (written by vitp itself, every option spelled out), in
    place, as the current options read it: the ``NativeProposer`` options named as before
    :data:`RENAMED_NATIVE` move into their blocks, and the parts' own :data:`REINIT_HEAD` switches
    are dropped (the folder's weights, loaded after the model is built, already fit its label space)."""
    args = _native_init_args(model) or {}
    for old in [k for k in args if k in RENAMED_NATIVE]:
        block, key = RENAMED_NATIVE[old].split(".")
        args.setdefault(block, {})[key] = args.pop(old)
    init = _init_args(model) or {}
    for part in ("classifier", "proposer"):
        (_init_args(init.get(part)) or {}).pop(REINIT_HEAD, None)
