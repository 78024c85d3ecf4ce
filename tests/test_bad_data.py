"""Bad data (issue 13): a corpus of broken inputs on a copy of the tiny COCO-panoptic tree. Each
kind is a clear error naming the file and the problem; kinds that concern one sample are, with
``on_bad_sample="skip"``, skipped with a warning naming the file and counted, the other images
unaffected. Kinds already covered elsewhere are not repeated here: truncated / garbage JPEG,
missing image / PNG, PNG size or ids not matching the JSON, unknown category, image size differing
from the JSON, grayscale and CMYK JPEGs, EXIF ignored for dataset images (tests/test_data_coco.py);
label-map values outside the label table, unpaired image/label files, wrong root or split, each
with on_bad_sample=skip too (tests/test_bad_data_cs_ade.py; tests/test_data_coco_format.py);
RGBA, 16-bit, grayscale and EXIF-rotated photos for predict (tests/test_predict_api.py).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process
from vitp.data import CocoPanopticDataModule, DatasetError, DatasetFileNotFoundError
from vitp.data.io import id2rgb, load_panoptic_png

N_VAL = 6  # images in the tiny val split (conftest.TINY_PARAMS)


@pytest.fixture
def tree(tiny_coco_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, dst)
    return dst


def _json_path(root: Path) -> Path:
    return root / "annotations" / "panoptic_val2017.json"


def _edit_json(root: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(_json_path(root).read_text())
    edit(data)
    _json_path(root).write_text(json.dumps(data))


def _first(root: Path) -> tuple[dict, dict]:
    data = json.loads(_json_path(root).read_text())
    return data["images"][0], data["annotations"][0]


def _image(root: Path) -> Path:
    return root / "val2017" / _first(root)[0]["file_name"]


def _png(root: Path) -> Path:
    return root / "annotations" / "panoptic_val2017" / _first(root)[1]["file_name"]


# Each kind damages the tree and returns (regex the error must match, whether it concerns one sample
# and can be skipped). Regexes name the file and the problem.


def truncated_png(root):
    p = _png(root)
    p.write_bytes(p.read_bytes()[:60])
    return rf"{p.name}: cannot read panoptic PNG \(corrupt or truncated", True


def zero_byte_image(root):
    p = _image(root)
    p.write_bytes(b"")
    return rf"{p.name}: cannot read image file", True


def zero_size_image(root):
    p = _image(root)  # a PNG header claiming 0 x height (PIL refuses to write one)
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return rf"{p.name}: cannot read image file", True


def panoptic_png_grayscale(root):
    p = _png(root)
    Image.open(p).convert("L").save(p)
    return rf"{p.name}: panoptic PNG must be RGB-encoded, got mode 'L'", True


def panoptic_png_16bit(root):
    p = _png(root)
    ids = load_panoptic_png(p)
    Image.fromarray(ids.astype(np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I")
    return rf"{p.name}: panoptic PNG must be RGB-encoded, got mode 'I", True


def zero_area_segment(root):
    _, ann = _first(root)

    def edit(data):
        data["annotations"][0]["segments_info"].append(
            {"id": 777, "category_id": data["categories"][0]["id"], "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]})
    _edit_json(root, edit)
    return rf"{ann['file_name']}: segment id\(s\) \[777\] listed in .*panoptic_val2017.json do not occur in the PNG", True


def missing_segments_info(root):
    _, ann = _first(root)
    _edit_json(root, lambda d: d["annotations"][0].pop("segments_info"))
    return rf"panoptic_val2017.json: annotation {ann['file_name']} has no 'segments_info' list", True


def segment_without_category(root):
    _, ann = _first(root)
    _edit_json(root, lambda d: d["annotations"][0]["segments_info"][0].pop("category_id"))
    return rf"panoptic_val2017.json: a segment of {ann['file_name']} lacks 'id' or 'category_id'", True


def segment_id_zero(root):
    _, ann = _first(root)
    _edit_json(root, lambda d: d["annotations"][0]["segments_info"][0].update(id=0))
    return rf"panoptic_val2017.json: {ann['file_name']} has an invalid or duplicate segment id 0", True


def duplicate_segment_id(root):
    _, ann = _first(root)

    def edit(data):
        infos = data["annotations"][0]["segments_info"]
        infos[1]["id"] = infos[0]["id"]
    _edit_json(root, edit)
    return rf"panoptic_val2017.json: {ann['file_name']} has an invalid or duplicate segment id", True


def image_without_annotation(root):
    im, _ = _first(root)
    _edit_json(root, lambda d: d["annotations"].pop(0))
    return rf"panoptic_val2017.json: image {im['file_name']} \(id {im['id']}\) has no panoptic annotation", True


def annotation_without_image(root):
    im, ann = _first(root)

    def edit(data):
        data["images"].pop(0)
    _edit_json(root, edit)
    return (rf"panoptic_val2017.json: annotation {ann['file_name']} refers to image id {im['id']}, which is not "
            r"in 'images'"), True


def duplicate_image_id(root):
    def edit(data):
        data["images"][1]["id"] = data["images"][0]["id"]
    im, _ = _first(root)
    _edit_json(root, edit)
    return rf"panoptic_val2017.json: duplicate image id {im['id']} \({im['file_name']} and ", False


def duplicate_annotation(root):
    im, _ = _first(root)
    _edit_json(root, lambda d: d["annotations"].append(dict(d["annotations"][0])))
    return rf"panoptic_val2017.json: two annotations for image id {im['id']}", False


def image_record_without_height(root):
    _edit_json(root, lambda d: d["images"][0].pop("height"))
    return r"panoptic_val2017.json: image 0 .* lacks \['height'\]", False


def annotation_record_without_file_name(root):
    _edit_json(root, lambda d: d["annotations"][0].pop("file_name"))
    return r"panoptic_val2017.json: annotation 0 .* lacks \['file_name'\]", False


def json_without_categories(root):
    _edit_json(root, lambda d: d.pop("categories"))
    return r"panoptic_val2017.json: missing 'categories'", False


def json_not_json(root):
    _json_path(root).write_text('{"images": [')
    return r"panoptic_val2017.json: cannot parse annotation JSON", False


def json_a_list(root):
    _json_path(root).write_text("[]")
    return r"panoptic_val2017.json: annotation JSON must be an object", False


def category_without_name(root):
    _edit_json(root, lambda d: d["categories"][0].pop("name"))
    return r"panoptic_val2017.json: malformed 'categories' entry", False


def wrong_split(root):
    shutil.move(root / "val2017", root / "validation2017")
    return r"val2017: image directory not found", False


KINDS = [truncated_png, zero_byte_image, zero_size_image, panoptic_png_grayscale, panoptic_png_16bit,
         zero_area_segment, missing_segments_info, segment_without_category, segment_id_zero, duplicate_segment_id,
         image_without_annotation, annotation_without_image, duplicate_image_id, duplicate_annotation,
         image_record_without_height, annotation_record_without_file_name, json_without_categories, json_not_json,
         json_a_list, category_without_name, wrong_split]


def _val_images(root: Path, on_bad_sample: str) -> tuple[list, CocoPanopticDataModule]:
    dm = CocoPanopticDataModule(root=str(root), image_size=32, num_workers=0, eval_batch_size=4,
                                on_bad_sample=on_bad_sample)
    dm.setup("validate")
    return [t.image_id for b in dm.val_dataloader() for t in b.targets], dm


@pytest.mark.parametrize("kind", KINDS, ids=lambda f: f.__name__)
def test_bad_input_is_an_error_naming_the_file_and_problem(kind, tree: Path):
    pattern, _ = kind(tree)
    with pytest.raises(DatasetError, match=pattern):
        _val_images(tree, "error")


@pytest.mark.parametrize("kind", [k for k in KINDS if k.__name__ not in (
    "json_not_json", "json_a_list", "json_without_categories", "category_without_name", "wrong_split")],
    ids=lambda f: f.__name__)
def test_skip_leaves_out_one_sample_with_a_warning_or_still_stops(kind, tree: Path):
    good = _val_images(tree, "error")[0]
    pattern, skippable = kind(tree)
    if not skippable:  # a whole-file problem: no right record to keep
        with pytest.raises(DatasetError, match=pattern):
            _val_images(tree, "skip")
        return
    with pytest.warns(RuntimeWarning, match="on_bad_sample=skip: skipped a val sample: .*" + pattern):
        ids, dm = _val_images(tree, "skip")
    skipped = [i for i in good if i not in ids]
    assert len(skipped) == 1 and [i for i in good if i in ids] == ids  # the others, in order
    assert dm.skipped_samples == {"val": 1}


def test_16bit_rgba_and_palette_dataset_images_are_read_not_clipped(tree: Path):
    from vitp.data.io import load_rgb

    data = json.loads(_json_path(tree).read_text())
    names = [im["file_name"] for im in data["images"][:3]]
    rgb = [np.asarray(Image.open(tree / "val2017" / n).convert("RGB")) for n in names]
    gray16 = (rgb[0][..., 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(tree / "val2017" / names[0], format="PNG")  # 16-bit PNG under a .jpg name
    alpha = np.full(rgb[1].shape[:2] + (1,), 255, np.uint8)
    Image.fromarray(np.concatenate([rgb[1], alpha], -1), "RGBA").save(tree / "val2017" / names[1], format="PNG")
    Image.fromarray(rgb[2]).convert("P").save(tree / "val2017" / names[2], format="PNG")
    assert load_rgb(tree / "val2017" / names[0])[..., 1].tolist() == rgb[0][..., 0].tolist()  # not clipped to 255
    assert load_rgb(tree / "val2017" / names[1]).tolist() == rgb[1].tolist()
    assert load_rgb(tree / "val2017" / names[2]).shape == rgb[2].shape
    ids, dm = _val_images(tree, "error")
    assert len(ids) == N_VAL


def test_wrong_root(tmp_path: Path):
    with pytest.raises(DatasetFileNotFoundError, match=rf"{tmp_path}/annotations/panoptic_val2017.json: annotation "
                                                       "file not found"):
        CocoPanopticDataModule(root=str(tmp_path)).dataset_info


def test_fit_and_predict_skip_broken_files_and_log_the_count(tree: Path, tmp_path: Path, monkeypatch):
    """`vitp fit` with on_bad_sample=skip: a truncated training JPEG and a validation image without
    annotation are left out, logged as train/skipped_samples and val/skipped_samples; `vitp predict`
    on a folder with a truncated file writes the others (skip) or stops naming it (error)."""
    monkeypatch.chdir(tmp_path)
    train = json.loads((tree / "annotations" / "panoptic_train2017.json").read_text())
    broken = tree / "train2017" / train["images"][3]["file_name"]
    broken.write_bytes(broken.read_bytes()[:200])
    _edit_json(tree, lambda d: d["annotations"].pop(2))
    config = PROJECT_ROOT / "configs/synthetic/vitp/tiny_oracle_masks.yaml"
    small = ["--data.init_args.root", str(tree), "--data.init_args.image_size", "32", "--data.init_args.num_workers",
             "0", "--data.init_args.batch_size", "4", "--data.init_args.on_bad_sample", "skip",
             "--model.init_args.classifier.init_args.image_size", "32",
             "--model.init_args.classifier.init_args.model_kwargs", "{depth: 1, embed_dim: 32, num_heads: 2, img_size: 32}",
             "--model.init_args.tasks", "[semantic]", "--trainer.accelerator", "cpu"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vitp_in_process("fit", "--config", str(config), *small, "--trainer.max_epochs", "1",
                        "--trainer.num_sanity_val_steps", "0", "--trainer.check_val_every_n_epoch", "1",
                        "--trainer.default_root_dir", str(tmp_path / "fit"))
    messages = [str(w.message) for w in caught if "skip" in str(w.message)]
    assert any(f"skipped a train sample: {broken}: cannot read image file" in m for m in messages), messages
    assert any("skipped a val sample: " in m and "has no panoptic annotation" in m for m in messages), messages
    rows = (tmp_path / "fit/lightning_logs/version_0/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {k: v for r in rows[1:] for k, v in zip(header, r.split(",")) if v}
    assert float(logged["train/skipped_samples"]) == 1.0 and float(logged["val/skipped_samples"]) == 1.0

    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((tree / "val2017").glob("*.jpg"))[:3]:
        shutil.copy(src, images / src.name)
    (images / "broken.jpg").write_bytes((images / src.name).read_bytes()[:150])
    proposer = PROJECT_ROOT / "configs/synthetic/proposer/mask2former_small.yaml"
    predict = ["predict", "--config", str(proposer), "--data.init_args.root", str(tree), "--data.init_args.image_size",
               "64", "--data.init_args.num_workers", "0", "--data.init_args.eval_batch_size", "2",
               "--model.init_args.proposer.init_args.preset", "tiny", "--data.init_args.path", str(images)]
    with pytest.warns(RuntimeWarning, match=r"skipped a predict sample: .*broken.jpg: cannot read image file"):
        vitp_in_process(*predict, "--data.init_args.on_bad_sample", "skip", "--model.init_args.output.export_dir",
                        str(tmp_path / "pred"))
    written = sorted(p.stem for p in (tmp_path / "pred" / "panoptic").iterdir())
    assert written == sorted(p.stem for p in images.iterdir() if p.name != "broken.jpg")
    with pytest.raises(DatasetError, match=r"broken.jpg: cannot read image file"):
        vitp_in_process(*predict, "--model.init_args.output.export_dir", str(tmp_path / "pred2"))
