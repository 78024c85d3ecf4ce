"""Point classifiers (pure ``nn.Module``, no Lightning)."""

from vitp.classifiers.loading import LoadReport
from vitp.classifiers.point_vit import PatchCache, PointViT

__all__ = ["LoadReport", "PatchCache", "PointViT"]
