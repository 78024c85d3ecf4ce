"""Backbones usable on their own (pure ``nn.Module``, no Lightning)."""

from vitp.backbones.native import NATIVE_PRESETS, NativeBackbone, NativeOutput
from vitp.backbones.native_grouping import Assignment, SpatialGrouping, compose

__all__ = ["NATIVE_PRESETS", "Assignment", "NativeBackbone", "NativeOutput", "SpatialGrouping", "compose"]
