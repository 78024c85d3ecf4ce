"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_PARAMS = {"num_train": 8, "num_val": 6, "image_size": 112, "seed": 1}
"""Parameters of the ``tiny_coco_root`` dataset (seed 1 has crowd regions in both splits)."""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = (PROJECT_ROOT / ".." / "shared" / "fixtures" / "coco_panoptic_sample").resolve()


@pytest.fixture(scope="session")
def tiny_coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated dataset in the official COCO 2017 panoptic layout (8 train + 6 val images,
    long side 112 px). Session-scoped and shared: treat it as read-only (copy it to write)."""
    from vitp.data.synthetic import generate_panoptic_dataset

    root = tmp_path_factory.mktemp("tiny_coco") / "coco"
    return generate_panoptic_dataset(root, **TINY_PARAMS)


@pytest.fixture(scope="session")
def coco_sample_root() -> Path:
    """The real COCO val2017 panoptic sample (2 images); skipped when absent."""
    if not (COCO_SAMPLE / "annotations" / "panoptic_val2017.json").is_file():
        pytest.skip(f"real COCO panoptic sample not found at {COCO_SAMPLE}")
    return COCO_SAMPLE


@pytest.fixture
def keep_threads():
    """For tests that call ``torch.set_num_threads`` (or run scripts that do): give the rest of the
    suite its setting back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
