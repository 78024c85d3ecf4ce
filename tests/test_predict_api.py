"""Predict on your own images (`vitp predict --data.init_args.path`), the Python API
(`vitp.Segmenter`), overlays and `scripts/make_figure.py`, on a tiny random ViT-P (tiny Mask2Former
proposer saved like stage 1 of the default run + tiny PointViT) and a folder of images in mixed
modes (RGB, L, RGBA, EXIF-rotated JPEG, 16-bit PNG)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"
PROPOSER_DIR = Path("outputs/synthetic/proposer_mask2former/hf_model")  # where the config looks


def _args(root: Path) -> list[str]:
    """Overrides shared by the CLI predict and the Segmenter (small sizes; keep every segment)."""
    return ["--data.init_args.root", str(root), "--data.init_args.image_size", "96",
            "--data.init_args.num_workers", "0", "--data.init_args.eval_batch_size", "2",
            "--model.init_args.classifier.init_args.image_size", "96",
            "--model.init_args.inference.keep_threshold", "0.0", "--model.init_args.inference.overlap_threshold", "0.0"]


@pytest.fixture(scope="module")
def run(tiny_coco_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A working directory with a saved tiny proposer and a ViT-P checkpoint of the default config."""
    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import Mask2FormerProposer

    workdir = tmp_path_factory.mktemp("predict_run")
    old = os.getcwd()
    os.chdir(workdir)
    try:
        torch.manual_seed(0)
        info = read_dataset_info(tiny_coco_root, "val")
        proposer = Mask2FormerProposer(preset="tiny", num_classes=info.num_classes,
                                       class_names=list(info.class_names), is_thing=list(info.is_thing))
        proposer.save_pretrained(PROPOSER_DIR)
        built = cli(["--config", str(CONFIG), *_args(tiny_coco_root), "--trainer.logger", "false"], run=False)
        ckpt = workdir / "vitp.ckpt"
        torch.save({"state_dict": built.model.state_dict(), "pytorch-lightning_version": L.__version__,
                    "epoch": 0, "global_step": 0}, ckpt)
        yield {"workdir": workdir, "ckpt": ckpt, "root": tiny_coco_root, "info": info}
    finally:
        os.chdir(old)


def _write_images(folder: Path, src: Path) -> dict[str, tuple[int, int]]:
    """Images in mixed modes; returns stem -> upright (H, W)."""
    folder.mkdir()
    rgb = np.asarray(Image.open(src).convert("RGB"))[:, :90]  # non-square
    h, w = rgb.shape[:2]
    Image.fromarray(rgb).save(folder / "a_rgb.jpg")
    Image.fromarray(rgb).convert("L").save(folder / "b_gray.png")
    rgba = np.concatenate([rgb, np.full((h, w, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(folder / "c_rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(folder / "d_exif.jpg", exif=exif.tobytes())
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "e_16bit.png")
    return {"a_rgb": (h, w), "b_gray": (h, w), "c_rgba": (h, w), "d_exif": (w, h), "e_16bit": (h, w)}


def test_user_images_modes_and_exif(tmp_path: Path):
    from vitp.data.folder import image_files, load_user_image, to_rgb_array

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    sizes = _write_images(tmp_path / "imgs", _save(tmp_path / "src.png", rgb))
    for path in image_files(tmp_path / "imgs"):
        image = load_user_image(path)
        assert image.dtype == np.uint8 and image.shape == (*sizes[path.stem], 3), path
    assert load_user_image(tmp_path / "imgs" / "e_16bit.png")[..., 0].tolist() == rgb[..., 0].tolist()
    # EXIF orientation 6: the stored image rotated 90 degrees clockwise
    upright = load_user_image(tmp_path / "imgs" / "d_exif.jpg")
    stored = np.asarray(Image.open(tmp_path / "imgs" / "d_exif.jpg").convert("RGB"))
    assert np.abs(upright.astype(int) - np.rot90(stored, -1).astype(int)).max() == 0
    # arrays and tensors
    assert to_rgb_array(torch.from_numpy(rgb).permute(2, 0, 1)).tolist() == rgb.tolist()
    assert to_rgb_array(rgb.astype(np.float32) / 255).tolist() == rgb.tolist()
    assert to_rgb_array(rgb[..., 0]).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="same stem"):
        (tmp_path / "imgs" / "a_rgb.png").write_bytes((tmp_path / "imgs" / "b_gray.png").read_bytes())
        image_files(tmp_path / "imgs")


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _predict(run, images: Path, out: Path, *extra: str) -> None:
    os.chdir(run["workdir"])
    vitp_in_process("predict", "--config", str(CONFIG), *_args(run["root"]), "--ckpt_path", str(run["ckpt"]),
                    "--data.init_args.path", str(images), "--model.init_args.output.export_dir", str(out), *extra)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_folder_of_mixed_images_and_python_api(run, tmp_path: Path):
    from pycocotools import mask as mask_utils

    from vitp import Segmenter
    from vitp.data.io import load_panoptic_png

    src = sorted((run["root"] / "val2017").glob("*.jpg"))[0]
    sizes = _write_images(tmp_path / "my_images", src)
    out = tmp_path / "pred"
    _predict(run, tmp_path / "my_images", out)  # files written on a background thread (the default)
    in_main_thread = tmp_path / "pred_main_thread"
    _predict(run, tmp_path / "my_images", in_main_thread, "--model.init_args.output.background_writing", "false")
    written = _files(out)
    assert len(written) > 15 and written == _files(in_main_thread)  # 3 batches: the same bytes either way
    info = run["info"]
    cat_names = dict(zip(info.category_ids, info.class_names))
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in panoptic["annotations"]) == sorted(f"{s}.png" for s in sizes)
    instances = json.loads((out / "instances.json").read_text())
    records = {}
    for stem, size in sizes.items():
        ids = load_panoptic_png(out / "panoptic" / f"{stem}.png")
        assert ids.shape == size, stem
        record = json.loads((out / "segments" / f"{stem}.json").read_text())
        records[stem] = record
        assert (record["height"], record["width"]) == size and record["image_id"] == stem
        assert record["panoptic"], f"{stem}: no segment kept"
        assert sorted(s["id"] for s in record["panoptic"]) == sorted(set(np.unique(ids).tolist()) - {0})
        for s in record["panoptic"]:
            assert s["area"] == int((ids == s["id"]).sum())
            assert s["label"] == cat_names[s["category_id"]] and 0.0 <= s["score"] <= 1.0
        sem = np.asarray(Image.open(out / "semantic" / f"{stem}.png"))
        assert sem.shape == size and set(np.unique(sem).tolist()) <= set(info.category_ids) | {255}
        assert sum(r["area"] for r in record["semantic"]) == int((sem != 255).sum())
        for r in record["instances"]:
            assert tuple(mask_utils.decode(r["segmentation"]).shape) == size
            assert r["label"] == cat_names[r["category_id"]]
        assert len(record["instances"]) == sum(r["image_id"] == stem for r in instances)
        for kind in ("panoptic", "semantic"):
            overlay_width, overlay_height = Image.open(out / "overlays" / kind / f"{stem}.jpg").size
            assert overlay_height == size[0] and overlay_width > size[1]  # image + legend on the right

    # the Python API: same model, same pipeline -> the same segments as `vitp predict`
    seg = Segmenter.from_checkpoint(run["ckpt"], config=CONFIG, overrides=_args(run["root"]))
    paths = [tmp_path / "my_images" / name for name in sorted(os.listdir(tmp_path / "my_images"))]
    results = seg(paths)
    assert len(results) == len(sizes)
    for path, result in zip(paths, results):
        header = ("image_id", "file_name", "height", "width")
        assert result.record == {k: v for k, v in records[path.stem].items() if k not in header}, path.name
        assert np.array_equal(result.panoptic, load_panoptic_png(out / "panoptic" / f"{path.stem}.png"))
        assert result.semantic.shape == sizes[path.stem]
        assert all(r["mask"].shape == sizes[path.stem] for r in result.instances)
    # one PIL image (EXIF applied), a numpy array and a tensor give the same result as the file (a
    # batch of one instead of two: scores equal up to float rounding)
    exif = results[paths.index(tmp_path / "my_images" / "d_exif.jpg")]
    one = seg(Image.open(tmp_path / "my_images" / "d_exif.jpg"))
    for other in (one, seg(exif.image), seg(torch.from_numpy(exif.image).permute(2, 0, 1))):
        assert np.array_equal(other.panoptic, exif.panoptic)
        assert [{**s, "score": round(s["score"], 5)} for s in other.segments] == \
            [{**s, "score": round(s["score"], 5)} for s in exif.segments]
    height, width = sizes["d_exif"]
    assert one.overlay(legend=False).size == (width, height)
    with_legend = one.overlay()  # the legend panel sits to the right of the image
    assert with_legend.size[1] == height and with_legend.size[0] > width


def test_predict_dir_alias_still_works_with_a_warning(tmp_path: Path, tiny_coco_root: Path):
    from vitp.data import CocoPanopticDataModule

    (tmp_path / "imgs").mkdir()
    src = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]
    (tmp_path / "imgs" / src.name).write_bytes(src.read_bytes())
    with pytest.warns(FutureWarning, match="data.init_args.path"):
        dm = CocoPanopticDataModule(root=str(tiny_coco_root), predict_dir=str(tmp_path / "imgs"), num_workers=0)
    dm.setup("predict")
    assert len(dm.predict_dataset) == 1
    one = CocoPanopticDataModule(root=str(tiny_coco_root), path=str(tmp_path / "imgs" / src.name), num_workers=0)
    one.setup("predict")
    assert len(one.predict_dataset) == 1


def test_make_figure_script(run, tmp_path: Path):
    """scripts/make_figure.py renders image | proposer | proposer + ViT-P | ground truth."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figure", PROJECT_ROOT / "scripts" / "make_figure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--workdir", str(run["workdir"]), "--config", str(CONFIG), "--ckpt", str(run["ckpt"]),
                       "--out", str(tmp_path / "figure.png"), "--images", "2", "--", *_args(run["root"])])
    image = Image.open(out)
    assert image.size[0] > 4 * 90 and image.size[1] > 2 * 90  # 4 panels per row, 2 rows


def test_vitp_export_onnx_matches_pytorch(run, tmp_path: Path):
    """`vitp-export` writes the point classifier (default config: one_way attention, sample_patch
    points, locality bias) and onnxruntime gives PyTorch's logits, for point counts other than the
    exported one."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from vitp.onnx_export import run as export

    os.chdir(run["workdir"])
    result = export(["--config", str(CONFIG), "--ckpt_path", str(run["ckpt"]), "--out", str(tmp_path / "onnx"),
                   "--", *_args(run["root"])])
    assert result["max_abs_diff"] < 1e-4
    meta = json.loads((tmp_path / "onnx" / "point_classifier.json").read_text())
    assert meta["image_size"] == 96 and meta["class_names"] == list(run["info"].class_names)
    assert meta["num_outputs"] == run["info"].num_classes + 1  # the default config trains a no-object output


def test_bench_predict_folder_tiny(run, tmp_path: Path):
    """`scripts/bench_predict_folder.py` at a tiny size, so it cannot rot: photos made from the
    dataset's images, the real `vitp predict` per run (here with and without background writing),
    times, memory, the profile's rows, and the same files from both runs."""
    import shlex

    from test_bench_scripts import _script

    small = shlex.join(_args(run["root"]))
    runs = [f"{small} --model.init_args.output.background_writing false", small]
    out = _script("bench_predict_folder").main([
        "--workdir", str(run["workdir"]), "--ckpt", str(run["ckpt"]), "--data-root", str(run["root"]),
        "--folder", str(tmp_path / "photos"), "--images", "3", "--min-side", "40", "--max-side", "120",
        "--runs", *runs, "--out", str(tmp_path / "out")])
    assert len(list((tmp_path / "photos").glob("*.jpg"))) == 3
    for result in out.values():
        assert result["written"] == 3 and result["same_files_as_first"]
        assert result["images_per_s"][0] > 0 and result["cpu"] > 0 and result["peak_mib"] > 0
        assert any("PredictionFiles" in row[0] for row in result["profile"])
    assert len(_files(tmp_path / "out" / "run0")) > 10


def test_gpu_check_pipeline_part_runs_on_cpu(run, tmp_path: Path):
    """`scripts/gpu_check.py`'s first part on the CPU: the default config's checkpoint where `make demo`
    writes it, loaded with `Segmenter.from_checkpoint`, predicted batch by batch under bf16 autocast
    (the path a lent GPU runs), images/s reported; the ViT part at a tiny size beside it."""
    import shutil

    from test_bench_scripts import _script

    workdir = tmp_path / "demo_run"
    shutil.copytree(run["workdir"] / "outputs", workdir / "outputs")  # the saved stage-1 proposer
    ckpt = workdir / "outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(run["ckpt"], ckpt)
    out = _script("gpu_check").main([
        "--device", "cpu", "--workdir", str(workdir), "--images", "3", "--batch", "2",
        "--vit-model", "vit_tiny_patch16_224", "--vit-size", "32", "--vit-batch", "1", "--vit-reps", "1",
        "--points", "2", "--vit-kwargs", "{'depth': 1, 'embed_dim': 16, 'num_heads': 1, 'img_size': 32}",
        "--", *_args(run["root"])])
    assert out["pipeline"] is not None and out["pipeline"]["images_per_s"] > 0
    assert out["pipeline"]["peak_gb"] is None  # measured on CUDA only
    assert out["vit"]["images_per_s"] > 0 and out["vit"]["mfu"] is None  # no --peak-tflops on a CPU
