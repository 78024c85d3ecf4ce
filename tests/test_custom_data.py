"""Your own COCO-format data as docs/datasets.md documents it: the custom-data config runs without
box data and leaves a checkpoint after one epoch; polygons are validated (odd length, fewer than 3
points, outside the image) with errors naming the file and the annotation, or skipped with a warning
under ``on_bad_sample: skip``; re-initialising heads is refused outside ``fit``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process
from test_data_coco_format import H, W, write_custom
from vitp.data.io import DatasetError

CONFIG = PROJECT_ROOT / "configs" / "coco" / "custom" / "tiny_oracle_masks_boxes.yaml"
SMALL = ["--data.init_args.image_size", "48", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
         "--model.init_args.classifier.init_args.image_size", "48",
         "--model.init_args.classifier.init_args.model_kwargs", "{depth: 1, embed_dim: 32, num_heads: 2, img_size: 48}",
         "--trainer.accelerator", "cpu", "--trainer.logger", "false"]


def test_custom_config_as_documented_without_boxes(tmp_path: Path, monkeypatch):
    """`vitp fit --config configs/coco/custom/tiny_oracle_masks_boxes.yaml --data.init_args.root my_data`
    with no annotations/boxes.json, one epoch: trains on the masks (warning), saves last.ckpt where
    the config says, and `vitp test` runs on it as documented."""
    root = write_custom(tmp_path / "my_data")
    (root / "annotations" / "boxes.json").unlink()
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        printed = vitp_in_process("fit", "--config", str(CONFIG), "--data.init_args.root", "my_data", *SMALL,
                                  "--trainer.max_epochs", "1")
    assert any("boxes.json: not found; this box dataset is optional" in str(w.message) for w in caught)
    ckpt = tmp_path / "outputs/custom/vitp_tiny_oracle_masks_boxes/checkpoints/last.ckpt"
    assert ckpt.is_file() and f"vitp fit: checkpoint {ckpt.resolve()}" in printed
    vitp_in_process("test", "--config", str(CONFIG), "--data.init_args.root", "my_data", *SMALL,
                    "--ckpt_path", str(ckpt))


def _instances(root: Path, polygon: list) -> Path:
    """``root/val.json``: one image, one good rectangle and one annotation (id 42) with ``polygon``."""
    from PIL import Image

    (root / "val").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(root / "val" / "a.jpg")
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 42, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 0, "segmentation": polygon}]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}], "annotations": anns,
            "categories": [{"id": 5, "name": "apple", "isthing": 1}]}
    (root / "val.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("polygon, problem", [
    ([[1, 1, 8, 1, 8, 8, 1]], "polygon 0 has an odd number of coordinates (7)"),
    ([[1, 1, 8, 8]], "polygon 0 has 2 point(s); a polygon needs at least 3"),
    ([[1, 1, 8, 1, 8, 8], [1, 1, 90, 1, 90, 8]], f"polygon 1 lies outside the {W}x{H} (WxH) image: x in [1, 90]"),
    ([[1, -5, 8, 1, 8, 8]], "lies outside"),
    ([], "empty segmentation"),
])
def test_bad_polygons_name_the_file_and_annotation(tmp_path: Path, polygon: list, problem: str):
    from vitp.data.coco_format import CocoInstancesDataset
    from vitp.data.loader import SampleReader, SkippedSample

    root = _instances(tmp_path / "d", polygon)
    ds = CocoInstancesDataset(root / "val", root / "val.json", image_size=32)
    with pytest.raises(DatasetError) as err:
        ds[0]
    message = str(err.value)
    assert message.startswith(f"{root / 'val.json'}: annotation 42 (image {root / 'val' / 'a.jpg'})"), message
    assert problem in message, message
    skipped = SampleReader(ds, "skip")[0]  # on_bad_sample: skip (the loader warns with this message and counts it)
    assert isinstance(skipped, SkippedSample) and skipped.message == message


def test_good_polygons_on_the_border_are_accepted(tmp_path: Path):
    from vitp.data.coco_format import CocoInstancesDataset

    root = _instances(tmp_path / "d", [[0, 0, W, 0, W, H, 0.0, H + 0.5]])  # the whole image (+ rounding)
    sample = CocoInstancesDataset(root / "val", root / "val.json", image_size=32)[0]
    assert len(sample.labels) == 2


def test_reinit_heads_refused_outside_fit():
    from test_checkpoint_mismatch import INFO4, parts
    from test_module import INFO
    from vitp.checkpoint_heads import reconcile_head_shapes
    from vitp.module import ViTPModule

    state = ViTPModule(**parts(INFO)).state_dict()
    module = ViTPModule(**parts(INFO4, reinit_heads_on_mismatch=True))
    with pytest.raises(ValueError, match="Outside `fit` the class-sized layers are never re-initialised") as err:
        reconcile_head_shapes(module, dict(state), INFO4.num_classes, reinit=True, fitting=False)
    assert "reinit_heads_on_mismatch" not in str(err.value)
    with pytest.warns(UserWarning, match="keeping their fresh initialisation"):  # in fit: the documented opt-in
        assert reconcile_head_shapes(module, dict(state), INFO4.num_classes, reinit=True, fitting=True)
