"""``NativeBackbone`` as a Hugging Face backbone (``AutoBackbone``), e.g. under Mask2Former.

transformers builds a model's backbone with ``backbone_utils.load_backbone(config)``, i.e.
``AutoBackbone.from_config(config.backbone_config)``; any config / model pair registered with
``AutoConfig.register`` and ``AutoBackbone.register`` is accepted there. This module defines the
pair and registers it on import (under the model type ``vitp_native``):

* ``NativeBackboneConfig``: the ``NativeBackbone`` arguments plus the backbone fields
  (``stage_names`` = ``stage1..stage4``, ``out_features``);
* ``NativeHFBackbone``: a ``PreTrainedModel`` with ``BackboneMixin`` wrapping ``NativeBackbone``; its
  ``feature_maps`` are the stages at strides 4 / 8 / 16 / 32.

The native backbone pads the image (bottom / right) to a multiple of 32; the maps returned here are
cropped to ``ceil(H / s) x ceil(W / s)`` per stride ``s``, the sizes a Swin backbone gives, so the
mask logits of the head cover the image and not the padding.

``mask2former_native(...)`` builds a random-initialised ``Mask2FormerForUniversalSegmentation``
with it; ``Mask2FormerProposer(preset="native-tiny" / "native-small")`` is the proposer route.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoBackbone, AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from vitp.backbones.native import NATIVE_PRESETS, NativeBackbone

MODEL_TYPE = "vitp_native"
STRIDES = (4, 8, 16, 32)


class NativeBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """HF config of ``NativeHFBackbone``. The fields are ``NativeBackbone``'s arguments (see there);
    ``out_features`` / ``out_indices`` select stages among ``stage1..stage4`` (default: all four)."""

    model_type = MODEL_TYPE

    num_channels: int = 3
    depths: list[int] | tuple[int, ...] = (1, 1, 2, 1)
    dims: list[int] | tuple[int, ...] = (32, 64, 128, 256)
    heads: list[int] | tuple[int, ...] = (1, 2, 4, 8)
    window: int = 8
    tau: float | None = None
    grouping_iters: int = 3
    grouping: bool = True
    query_init: str = "conv"
    pos_bias: bool = True
    mlp_ratio: float = 4.0
    dense_locality: float = 0.0
    learn_tau: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_channels != 3:
            raise ValueError(f"NativeBackbone takes RGB images (num_channels=3), got {self.num_channels}")
        self.depths, self.dims, self.heads = list(self.depths), list(self.dims), list(self.heads)
        self.stage_names = [f"stage{i}" for i in range(1, 5)]
        out_features, out_indices = kwargs.pop("out_features", None), kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features = list(self.stage_names)
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "NativeBackboneConfig":
        """The config of ``NativeBackbone.from_preset(name)`` (``tiny`` / ``small``), with overrides."""
        return cls(**native_backbone_dict(name, **overrides))


def native_backbone_dict(name: str, **overrides: Any) -> dict[str, Any]:
    """A ``backbone_config`` dict (with ``model_type``) for a ``NATIVE_PRESETS`` entry, as the
    proposer presets / ``config_overrides`` take it."""
    if name not in NATIVE_PRESETS:
        raise ValueError(f"unknown native preset {name!r}; choose from {sorted(NATIVE_PRESETS)}")
    return {"model_type": MODEL_TYPE, **NATIVE_PRESETS[name], **overrides}


class NativeHFBackbone(BackboneMixin, PreTrainedModel):
    """``NativeBackbone`` behind the HF backbone API: ``forward(pixel_values)`` returns a
    ``BackboneOutput`` whose ``feature_maps`` are the selected stages (strides 4 / 8 / 16 / 32).

    ``self.native`` is the wrapped ``NativeBackbone``; ``self.last_output`` keeps the latest
    ``NativeOutput`` (assignments, group tokens) for callers that want the grouping as well.
    """

    config: NativeBackboneConfig
    config_class = NativeBackboneConfig
    base_model_prefix = "native"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    has_attentions = False

    def __init__(self, config: NativeBackboneConfig) -> None:
        super().__init__(config)
        self.native = NativeBackbone(
            depths=config.depths, dims=config.dims, heads=config.heads, window=config.window, tau=config.tau,
            grouping_iters=config.grouping_iters, grouping=config.grouping,
            query_init=config.query_init, pos_bias=config.pos_bias,  # query_init checked by SpatialGrouping
            mlp_ratio=config.mlp_ratio,
            dense_locality=config.dense_locality, learn_tau=config.learn_tau,
        )
        self.num_features = list(config.dims)
        self.last_output = None
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Keep ``NativeBackbone``'s own initialisation (a parent model may still re-initialise)."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BackboneOutput | tuple:
        """``pixel_values float[B, 3, H, W]`` -> ``feature_maps``: per selected stage
        ``float[B, C_s, ceil(H / s), ceil(W / s)]``; ``hidden_states`` (all four) on request."""
        out = self.native(pixel_values)
        self.last_output = out
        h, w = pixel_values.shape[-2:]
        maps = tuple(f[..., : -(-h // s), : -(-w // s)] for f, s in zip(out.features, STRIDES))
        feature_maps = tuple(m for name, m in zip(self.stage_names, maps) if name in self.out_features)
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        hidden = maps if output_hidden_states else None
        if return_dict is False:
            return (feature_maps, hidden) if hidden is not None else (feature_maps,)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden)


def register() -> None:
    """Register the pair with ``AutoConfig`` / ``AutoBackbone`` (idempotent; done on import)."""
    AutoConfig.register(MODEL_TYPE, NativeBackboneConfig, exist_ok=True)
    AutoBackbone.register(NativeBackboneConfig, NativeHFBackbone, exist_ok=True)


def mask2former_native(native_preset: str = "tiny", labels: list[str] | None = None, **mask2former: Any) -> Any:
    """A random-initialised ``Mask2FormerForUniversalSegmentation`` on the native backbone.

    ``native_preset``: ``tiny`` / ``small``; ``labels``: class names (default 3 classes);
    ``mask2former``: ``Mask2FormerConfig`` fields (``feature_size`` must be a multiple of 32, the
    pixel decoder's GroupNorm).
    """
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    labels = list(labels) if labels is not None else ["a", "b", "c"]
    cfg = Mask2FormerConfig(
        backbone_config=NativeBackboneConfig.from_preset(native_preset),
        use_pretrained_backbone=False,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        **mask2former,
    )
    return Mask2FormerForUniversalSegmentation(cfg)


register()

__all__ = ["MODEL_TYPE", "NativeBackboneConfig", "NativeHFBackbone", "mask2former_native", "native_backbone_dict",
           "register"]
