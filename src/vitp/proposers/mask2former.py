"""Mask2Former (HF ``Mask2FormerForUniversalSegmentation``) as a vitp mask proposer.

Presets ``native-tiny`` / ``native-small`` put vitp's grouping backbone (``NativeBackbone``, via
``vitp.backbones.hf_native``, registered with ``AutoBackbone`` on import) under the pixel decoder
in place of Swin; the rest of the architecture is that of ``tiny`` / ``small``.
"""

from __future__ import annotations

from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

from vitp.backbones.hf_native import native_backbone_dict
from vitp.proposers.hf_build import swin_backbone
from vitp.proposers.hf_universal import HFUniversalProposer
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
# the grouping backbone (strides 4/8/16/32) under the same pixel decoder and transformer decoder
MASK2FORMER_PRESETS["native-tiny"] = {**MASK2FORMER_PRESETS["tiny"], "backbone_config": native_backbone_dict("tiny")}
MASK2FORMER_PRESETS["native-small"] = {**MASK2FORMER_PRESETS["small"], "backbone_config": native_backbone_dict("small")}


class Mask2FormerProposer(HFUniversalProposer):
    """Mask2Former proposer (HF ``Mask2FormerForUniversalSegmentation``); one forward serves all
    tasks. Arguments: see ``HFUniversalProposer``."""

    hf_model_class = Mask2FormerForUniversalSegmentation
    hf_config_class = Mask2FormerConfig
    presets = MASK2FORMER_PRESETS
    proposer_name = "mask2former"

    def _run(self, images, tasks):
        out = self.hf(
            pixel_values=images,
            output_auxiliary_logits=bool(self.hf.config.use_auxiliary_loss),
            return_dict=True,
        )
        layers = [DecoderLayerOutput(a["masks_queries_logits"], a["class_queries_logits"])
                  for a in out.auxiliary_logits or []]
        return out.masks_queries_logits, out.class_queries_logits, layers, None
