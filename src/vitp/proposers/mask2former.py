"""Mask2Former (HF ``Mask2FormerForUniversalSegmentation``) as a vitp mask proposer."""

from __future__ import annotations

from typing import Literal

from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

from vitp.proposers.base import register_proposer
from vitp.proposers.hf_common import HFUniversalProposer, swin_backbone
from vitp.structures import DecoderLayerOutput

_COMMON = {"use_pretrained_backbone": False, "dropout": 0.0}

MASK2FORMER_PRESETS: dict[str, dict] = {
    # tests: ~0.36 M parameters, a few ms per 256 px image on a laptop core
    "tiny": {
        **_COMMON,
        "backbone_config": swin_backbone(16, [1, 1, 1, 1], [1, 1, 2, 2]),
        "feature_size": 32,
        "mask_feature_size": 32,
        "hidden_dim": 32,
        "encoder_feedforward_dim": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "num_attention_heads": 2,
        "dim_feedforward": 64,
        "num_queries": 20,
        "train_num_points": 1024,
    },
    # default CPU run
    "small": {
        **_COMMON,
        "backbone_config": swin_backbone(32, [1, 1, 2, 1], [1, 2, 4, 8]),
        "feature_size": 64,
        "mask_feature_size": 64,
        "hidden_dim": 64,
        "encoder_feedforward_dim": 128,
        "encoder_layers": 2,
        "decoder_layers": 4,
        "num_attention_heads": 4,
        "dim_feedforward": 256,
        "num_queries": 50,
        "train_num_points": 4096,
    },
    # the published architecture with a Swin-T backbone (random init; for real GPU training)
    "swin-tiny": {
        **_COMMON,
        "backbone_config": {**swin_backbone(96, [2, 2, 6, 2], [3, 6, 12, 24]), "drop_path_rate": 0.3},
    },
}


@register_proposer("mask2former")
class Mask2FormerProposer(HFUniversalProposer):
    """Mask2Former proposer (HF transformers), from a hub id, a local directory or a preset.

    Args:
        model: hub id (``facebook/mask2former-swin-large-coco-panoptic``) or a directory written by
            ``save_pretrained``; takes precedence over ``preset``.
        num_classes: number of dataset classes K (defaults to the proposer's own).
        preset: random-init architecture (``tiny``/``small`` for CPU, ``swin-tiny`` full size).
        config_overrides: ``Mask2FormerConfig`` fields (``backbone_config`` given as a dict is merged
            into the preset's); for ``model`` they are passed to ``from_pretrained``.
        class_agnostic: one "object" class; ``class_logits`` is then None and
            ``aux["objectness"]`` holds ``1 - p(no object)`` per query.
        label_map: explicit proposer -> dataset class map (names or indices; null drops a class).
        class_names: the dataset's class names (matched by name to the proposer's ``id2label``).
        match_by_name: match class names automatically (``label_map`` entries take precedence).
        unmapped: proposer classes without a dataset class are dropped before the softmax
            (``drop``) or folded into the no-object column (``void``).
        reinit_head: with ``model``, replace the class head by a fresh one for ``num_classes``.
        freeze: ``none``, ``backbone`` or ``all``.
        is_thing: per dataset class, used to build ``instance``-task targets (things only).
    """

    hf_model_class = Mask2FormerForUniversalSegmentation
    hf_config_class = Mask2FormerConfig
    presets = MASK2FORMER_PRESETS
    proposer_name = "mask2former"
    task_conditioned = False  # one forward serves all tasks

    def __init__(
        self,
        model: str | None = None,
        num_classes: int | None = None,
        preset: Literal["tiny", "small", "swin-tiny"] | None = None,
        config_overrides: dict | None = None,
        class_agnostic: bool = False,
        label_map: dict[str, str | None] | dict[int, int | None] | None = None,
        class_names: list[str] | None = None,
        match_by_name: bool = True,
        unmapped: Literal["drop", "void"] = "drop",
        reinit_head: bool = False,
        freeze: Literal["none", "backbone", "all"] = "none",
        is_thing: list[bool] | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            model, num_classes, preset, config_overrides, class_agnostic, label_map, class_names,
            match_by_name, unmapped, reinit_head, freeze, is_thing,
        )

    def _run(self, images, tasks):
        out = self.hf(
            pixel_values=images,
            output_auxiliary_logits=bool(self.hf.config.use_auxiliary_loss),
            return_dict=True,
        )
        layers = [DecoderLayerOutput(a["masks_queries_logits"], a["class_queries_logits"])
                  for a in out.auxiliary_logits or []]
        return out.masks_queries_logits, out.class_queries_logits, layers, None
