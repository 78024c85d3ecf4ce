"""``NativeBackbone``: a hierarchical ViT whose downsampling layers are spatial grouping layers.

Four stages at strides 4 / 8 / 16 / 32: a 4x4 patch embedding, then ``depths[s]`` windowed
attention blocks per stage; between stages a ``SpatialGrouping`` layer (``N -> N/4`` tokens,
``dims[s] -> dims[s+1]`` channels). The first two grouping layers are local (3x3 neighbourhood),
the last is dense. Their assignments chain (see ``native_grouping.compose``) into soft masks: each
stride-4 token gets a distribution over the final groups.

The image is padded (bottom / right, zeros) to a multiple of 32, so the number of final groups is
``ceil(H/32) * ceil(W/32)`` = (number of stride-4 tokens) / 4^3: 64 groups for a 256x256 image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitp.backbones.native_blocks import Stage
from vitp.backbones.native_grouping import Assignment, SpatialGrouping, compose

NATIVE_PRESETS: dict[str, dict] = {
    # tests: ~0.2 M parameters
    "tiny": {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "heads": [1, 2, 2, 4], "window": 8},
    # default CPU run (2 cores): ~2 M parameters
    "small": {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256], "heads": [1, 2, 4, 8], "window": 8},
}


@dataclass
class NativeOutput:
    """What ``NativeBackbone`` returns.

    features: four ``float[B, C_s, H_p / 2^(s+2), W_p / 2^(s+2)]`` maps (strides 4, 8, 16, 32) of the
        image padded to ``(H_p, W_p)``, multiples of 32.
    tokens: ``float[B, G, C_4]`` the final group tokens (``G`` = number of stride-32 cells).
    assignments: the three grouping layers' ``A_ups`` (last iteration).
    """

    features: list[torch.Tensor]
    tokens: torch.Tensor
    assignments: list[Assignment]
    image_size: tuple[int, int]
    padded_size: tuple[int, int]

    def chain(self, level: int = 3) -> torch.Tensor:
        """``float[B, N_4, N_level]``: for each stride-4 token, the distribution over the groups of
        ``level`` (1: stride 8, 2: stride 16, 3: the final groups). Rows sum to 1."""
        if not 1 <= level <= len(self.assignments):
            raise ValueError(f"level must be in 1..{len(self.assignments)}, got {level}")
        return compose(self.assignments[:level])

    def soft_masks(self, level: int = 3) -> torch.Tensor:
        """``float[B, N_level, H_p/4, W_p/4]``: the chain's columns as maps (probabilities)."""
        m = self.chain(level)
        h, w = self.assignments[0].in_size
        return m.transpose(1, 2).reshape(m.shape[0], -1, h, w)


class NativeBackbone(nn.Module):
    """SeNaTra-style grouping backbone (random init; see the module docstring).

    Args:
        depths: transformer blocks per stage (4 values).
        dims: channels per stage (4 values; the reference doubles them).
        heads: attention heads per stage (4 values).
        window: attention window (tokens per side); a stage grid within one window is global.
        tau: grouping logit scale (None: ``dim ** -0.5`` of each layer's output).
        grouping_iters: iterations L of each grouping layer.
        grouping: False = strided-conv downsampling (hard parent-cell assignments; ablation).
        query_init: ``conv`` (strided conv of the input) or ``learned`` output-token init.
        pos_bias: relative position bias in the grouping logits.
        mlp_ratio: MLP width / dim in blocks and grouping layers.
        dense_locality: opt-in (0 = off): initial strength of a learned locality prior in the final
            (dense) grouping layer (see ``SpatialGrouping``'s ``locality``).
        learn_tau: opt-in: every grouping layer learns its logit scale (clamped log-parameter).
    """

    def __init__(
        self,
        depths: list[int] = (1, 1, 2, 1),
        dims: list[int] = (32, 64, 128, 256),
        heads: list[int] = (1, 2, 4, 8),
        window: int = 8,
        tau: float | None = None,
        grouping_iters: int = 3,
        grouping: bool = True,
        query_init: Literal["conv", "learned"] = "conv",
        pos_bias: bool = True,
        mlp_ratio: float = 4.0,
        dense_locality: float = 0.0,
        learn_tau: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("depths", depths), ("dims", dims), ("heads", heads)):
            if len(v) != 4:
                raise ValueError(f"{name} needs 4 values (one per stage), got {list(v)}")
        self.dims = [int(d) for d in dims]
        self.patch_embed = nn.Conv2d(3, dims[0], 4, stride=4)
        self.embed_norm = nn.LayerNorm(dims[0])
        self.stages = nn.ModuleList(Stage(dims[s], depths[s], heads[s], window, mlp_ratio) for s in range(4))
        self.groupings = nn.ModuleList(
            SpatialGrouping(dims[s], dims[s + 1], local=s < 2, iterations=grouping_iters, tau=tau,
                            pos_bias=pos_bias, query_init=query_init, grouping=grouping, mlp_ratio=mlp_ratio,
                            locality=dense_locality if s == 2 else 0.0, learn_tau=learn_tau)
            for s in range(3)
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "NativeBackbone":
        if name not in NATIVE_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(NATIVE_PRESETS)}")
        return cls(**{**NATIVE_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def forward(self, images: torch.Tensor) -> NativeOutput:
        """``images float[B, 3, H, W]`` (any size) -> ``NativeOutput``."""
        b, _, hi, wi = images.shape
        hp, wp = -(-hi // 32) * 32, -(-wi // 32) * 32
        if (hp, wp) != (hi, wi):
            images = F.pad(images, (0, wp - wi, 0, hp - hi))
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        features, assignments = [], []
        for s, stage in enumerate(self.stages):
            x = stage(x, h, w)
            features.append(x.transpose(1, 2).reshape(b, -1, h, w))
            if s < 3:
                x, a = self.groupings[s](x, h, w)
                assignments.append(a)
                h, w = h // 2, w // 2
        return NativeOutput(features, x, assignments, (hi, wi), (hp, wp))
