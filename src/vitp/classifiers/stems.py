"""Convolutional stems for ViTs trained from scratch.

A ViT whose patch embedding is one strided ``p x p`` convolution learns local texture and shape
slowly from few images. A stack of 3x3 stride-2 convolutions with the same total stride (Xiao et
al., "Early Convolutions Help Transformers See Better", 2021) gives it that locality at a small
cost. :func:`conv_stem` builds one that replaces ``PatchEmbed.proj`` (same input, same output
shape ``[B, D, H / p, W / p]``), so timm's patch-embedding logic, position embedding and every
other weight name stay as they are.
"""

from __future__ import annotations

import math

from torch import nn

DEFAULT_WIDTH = 32


def patch_projection(stem: str, patch_size: int, embed_dim: int, width: int = DEFAULT_WIDTH) -> nn.Module | None:
    """The module replacing ``PatchEmbed.proj`` for ``stem`` (``PointViT``'s option): a :func:`conv_stem`
    for ``"conv"``, None for ``"patch"`` (timm's own strided projection kept); ``width`` is the conv
    stem's only."""
    if stem == "conv":
        return conv_stem(patch_size, embed_dim, width=width)
    if stem != "patch":
        raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
    if width != DEFAULT_WIDTH:
        raise ValueError("stem_width applies to stem='conv' only")
    return None


def conv_stem(patch_size: int, embed_dim: int, in_chans: int = 3, width: int = DEFAULT_WIDTH) -> nn.Sequential:
    """3x3 stride-2 conv + BatchNorm + ReLU blocks (channels doubling from ``width``) down to
    stride ``patch_size`` (a power of two), then a 1x1 projection to ``embed_dim``."""
    steps = int(round(math.log2(patch_size)))
    if patch_size < 2 or 2**steps != patch_size:
        raise ValueError(f"a conv stem needs a power-of-two patch size >= 2, got {patch_size}")
    if width < 1:
        raise ValueError(f"a conv stem needs a width >= 1, got {width}")
    layers: list[nn.Module] = []
    channels = in_chans
    for i in range(steps):
        out = min(width * 2**i, embed_dim)
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    layers.append(nn.Conv2d(channels, embed_dim, 1))
    return nn.Sequential(*layers)
