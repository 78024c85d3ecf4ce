"""Bad data in Cityscapes and ADE20K (issue 13), on tiny copies in the official layouts
(``write_cityscapes`` / ``write_ade20k``): an image without its label file, a label file without
its image, a missing ``*_instanceIds.png`` and label values outside the label table are errors
naming the file and the problem; with ``on_bad_sample="skip"`` that item is left out with a warning
naming the file and counted, the other images unaffected. A wrong root or split, or a split where
no image has its label, stops the run either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from test_data_ade20k import write_ade20k
from test_data_cityscapes import H, W, write_cityscapes
from vitp.data.ade20k import ADE20KDataModule
from vitp.data.cityscapes import CityscapesDataModule
from vitp.data.io import DatasetError
from vitp.points import ClassBalancedSampler


@pytest.fixture(scope="module")
def cs_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cs") / "cityscapes")


@pytest.fixture(scope="module")
def ade_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ade20k(tmp_path_factory.mktemp("ade") / "ADEChallengeData2016")


CS_VAL = "gtFine/val/frankfurt"
ADE_VAL = "annotations/validation"

# Each kind damages a copy of the tree and returns: the data module ("cs" or "ade") and its
# arguments, the error (regex naming the file and the problem), and with on_bad_sample=skip either
# ("skip", regex of the warning) or ("error", regex): a problem of the whole split still stops.


def cs_image_without_label(root: Path) -> dict[str, Any]:
    (root / CS_VAL / "frankfurt_000000_000019_gtFine_labelIds.png").unlink()
    image = root / "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    return dict(data="cs", error=r"val has 4 images and .* 3 label files; images without label: "
                r"\['frankfurt_000000_000019_leftImg8bit.png'\].*on_bad_sample=skip",
                skip=("skip", rf"{image}: image has no label file \(expected .*/{CS_VAL}/"
                      r"frankfurt_000000_000019_gtFine_labelIds.png\)"))


def cs_label_without_image(root: Path) -> dict[str, Any]:
    (root / "leftImg8bit/val/lindau/lindau_000001_000020_leftImg8bit.png").unlink()
    label = root / "gtFine/val/lindau/lindau_000001_000020_gtFine_labelIds.png"
    return dict(data="cs", error=r"val has 3 images and .* 4 label files; images without label: \[\], "
                r"labels without image: \['lindau_000001_000020_gtFine_labelIds.png'\]",
                skip=("skip", rf"{label}: label file has no image \(expected "
                      r".*leftImg8bit/val/lindau/lindau_000001_000020_leftImg8bit.png\)"))


def cs_missing_instance_ids(root: Path) -> dict[str, Any]:
    inst = root / CS_VAL / "frankfurt_000001_000020_gtFine_instanceIds.png"
    inst.unlink()
    pattern = rf"{inst}: instance-id file of frankfurt_000001_000020_leftImg8bit.png not found"
    return dict(data="cs", error=pattern, skip=("skip", pattern))


def cs_label_id_outside_table(root: Path) -> dict[str, Any]:
    label = root / CS_VAL / "frankfurt_000001_000020_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(label)
    pattern = rf"{label}: label id value\(s\) \[40\] are outside the label table"
    return dict(data="cs", kwargs={"mode": "semantic"}, error=pattern, skip=("skip", pattern))


def cs_instance_id_outside_table(root: Path) -> dict[str, Any]:
    inst = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_instanceIds.png"
    Image.fromarray(np.full((H, W), 45001, np.uint16)).save(inst)
    pattern = rf"{inst}: label id \(instanceIds // 1000 or < 1000\) value\(s\) \[45\] are outside the label table"
    return dict(data="cs", error=pattern, skip=("skip", pattern))


def cs_no_label_at_all(root: Path) -> dict[str, Any]:
    for p in (root / "gtFine/val").rglob("*_labelIds.png"):
        p.unlink()
    return dict(data="cs", error=r"val has 4 images and .* 0 label files",
                skip=("error", r"0 label files.*no image has its label file"))


def cs_wrong_split(root: Path) -> dict[str, Any]:
    pattern = r"leftImg8bit/validation: image directory not found \(wrong root or missing split\?\)"
    return dict(data="cs", kwargs={"val_split": "validation"}, error=pattern, skip=("error", pattern))


def cs_wrong_root(root: Path) -> dict[str, Any]:
    shutil.move(root / "leftImg8bit", root / "images")
    pattern = r"leftImg8bit: not found; root must be the Cityscapes directory holding leftImg8bit/ and gtFine/"
    return dict(data="cs", error=pattern, skip=("error", pattern))


def ade_image_without_annotation(root: Path) -> dict[str, Any]:
    (root / ADE_VAL / "ADE_val_00000002.png").unlink()
    image = root / "images/validation/ADE_val_00000002.jpg"
    return dict(data="ade", error=r"validation has 3 images and .* 2 label files; images without label: "
                r"\['ADE_val_00000002.jpg'\]",
                skip=("skip", rf"{image}: image has no label file \(expected .*/{ADE_VAL}/ADE_val_00000002.png\)"))


def ade_annotation_without_image(root: Path) -> dict[str, Any]:
    (root / "images/validation/ADE_val_00000003.jpg").unlink()
    label = root / ADE_VAL / "ADE_val_00000003.png"
    return dict(data="ade", error=r"labels without image: \['ADE_val_00000003.png'\]",
                skip=("skip", rf"{label}: label file has no image \(expected "
                      r".*images/validation/ADE_val_00000003.jpg\)"))


def ade_class_outside_table(root: Path) -> dict[str, Any]:
    label = root / ADE_VAL / "ADE_val_00000001.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 200
    Image.fromarray(values).save(label)
    pattern = rf"{label}: class value\(s\) \[200\] are outside the label table"
    return dict(data="ade", error=pattern, skip=("skip", pattern))


def ade_wrong_split(root: Path) -> dict[str, Any]:
    pattern = r"images/valid: image directory not found \(wrong root or missing split\?\)"
    return dict(data="ade", kwargs={"val_split": "valid"}, error=pattern, skip=("error", pattern))


def ade_wrong_root(root: Path) -> dict[str, Any]:
    shutil.move(root / "images", root / "img")
    pattern = r"images: not found; root must be the ADEChallengeData2016 directory"
    return dict(data="ade", error=pattern, skip=("error", pattern))


KINDS = [cs_image_without_label, cs_label_without_image, cs_missing_instance_ids, cs_label_id_outside_table,
         cs_instance_id_outside_table, cs_no_label_at_all, cs_wrong_split, cs_wrong_root,
         ade_image_without_annotation, ade_annotation_without_image, ade_class_outside_table, ade_wrong_split,
         ade_wrong_root]


def _data_module(data: str, root: Path, on_bad_sample: str, **kwargs: Any):
    cls = CityscapesDataModule if data == "cs" else ADE20KDataModule
    return cls(root=str(root), image_size=32, num_workers=0, eval_batch_size=3, on_bad_sample=on_bad_sample,
               **kwargs)


def _val_ids(data: str, root: Path, on_bad_sample: str, **kwargs: Any):
    dm = _data_module(data, root, on_bad_sample, **kwargs)
    dm.setup("validate")
    return [t.image_id for b in dm.val_dataloader() for t in b.targets], dm


def _damaged(kind, cs_clean: Path, ade_clean: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    data = kind.__name__.split("_")[0]
    src = cs_clean if data == "cs" else ade_clean
    root = tmp_path / src.name
    shutil.copytree(src, root)
    good = _val_ids(data, root, "error")[0]  # before the damage
    spec = kind(root)
    assert spec["data"] == data
    spec["good"] = good
    return root, spec


@pytest.mark.parametrize("kind", KINDS, ids=lambda f: f.__name__)
def test_bad_item_is_an_error_naming_the_file_and_problem(kind, cs_clean: Path, ade_clean: Path, tmp_path: Path):
    root, spec = _damaged(kind, cs_clean, ade_clean, tmp_path)
    with pytest.raises(DatasetError, match=spec["error"]):
        _val_ids(spec["data"], root, "error", **spec.get("kwargs", {}))


@pytest.mark.parametrize("kind", KINDS, ids=lambda f: f.__name__)
def test_skip_leaves_out_the_item_with_a_warning_or_still_stops(kind, cs_clean: Path, ade_clean: Path,
                                                                tmp_path: Path):
    root, spec = _damaged(kind, cs_clean, ade_clean, tmp_path)
    outcome, pattern = spec["skip"]
    if outcome == "error":  # wrong root or split, nothing paired: no right item to keep
        with pytest.raises(DatasetError, match=pattern):
            _val_ids(spec["data"], root, "skip", **spec.get("kwargs", {}))
        return
    with pytest.warns(RuntimeWarning, match="on_bad_sample=skip: skipped a val sample: " + pattern):
        ids, dm = _val_ids(spec["data"], root, "skip", **spec.get("kwargs", {}))
    good = spec["good"]
    assert len(good) == 4 if spec["data"] == "cs" else len(good) == 3
    assert len(ids) == len(good) - 1 and [i for i in good if i in ids] == ids  # the others, in order
    assert dm.skipped_samples == {"val": 1}


def test_training_with_coarse_labels_skips_unpaired_files_of_every_part(cs_clean: Path, tmp_path: Path):
    """Fine and coarse training sets (one ``ConcatDataset``): an unpaired coarse image and a fine
    label file without image are left out and counted as train samples; the rest is trained on."""
    root = tmp_path / "cityscapes"
    shutil.copytree(cs_clean, root)
    (root / "gtCoarse/train_extra/augsburg/augsburg_000001_000020_gtCoarse_labelIds.png").unlink()
    (root / "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png").unlink()
    kwargs = dict(root=str(root), coarse_splits=["train_extra"], num_workers=0, image_size=32, batch_size=2,
                  point_sampler=ClassBalancedSampler(num_points=8))
    with pytest.raises(DatasetError, match=r"labels without image: \['bochum_000000_000019_gtFine_labelIds.png'\]"):
        CityscapesDataModule(**kwargs).setup("fit")
    dm = CityscapesDataModule(on_bad_sample="skip", **kwargs)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 + 1  # fine: 4 - 1, coarse: 2 - 1
    with pytest.warns(RuntimeWarning) as caught:
        ids = sorted(t.image_id for b in dm.train_dataloader() for t in b.targets)
    messages = [str(w.message) for w in caught if "on_bad_sample=skip" in str(w.message)]
    assert len(messages) == 2
    assert any("bochum_000000_000019_gtFine_labelIds.png: label file has no image" in m for m in messages)
    assert any("augsburg_000001_000020_leftImg8bit.png: image has no label file" in m for m in messages)
    assert ids == ["aachen_000000_000019", "aachen_000001_000020", "augsburg_000000_000019", "bochum_000001_000020"]
    assert dm.skipped_samples == {"train": 2}
