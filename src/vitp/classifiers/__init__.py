"""Point classifiers (pure ``nn.Module``, no Lightning)."""

from vitp.classifiers.base import PointClassifier
from vitp.classifiers.glimpse import GlimpseSettings
from vitp.classifiers.loading import LoadReport
from vitp.classifiers.point_vit import PatchCache, PointViT

__all__ = ["GlimpseSettings", "LoadReport", "PatchCache", "PointClassifier", "PointViT"]
