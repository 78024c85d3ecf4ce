"""A trained model as one folder you can share (``Segmenter.save_pretrained`` / ``from_pretrained``).

The folder holds everything the model needs and nothing outside it::

    vitp_config.yaml        the model section of the training config (+ evaluation transform); its
                            only paths are relative to the folder (listed in vitp_pretrained.json)
    label_space.json        category ids, names, thing / stuff
    classifier.safetensors  the point classifier's weights
    proposer/               a Hugging Face proposer's own save_pretrained (config.json +
                            model.safetensors); other proposers: proposer.safetensors, their
                            architecture in the config (NativeProposer: its resolved ``architecture``)
    vitp_pretrained.json    format version, relative paths, training data and metrics as recorded
    README.md               model card: label space, training data, measured metrics, how to load

``load_pretrained`` reads it from any working directory, or downloads a Hugging Face hub repo
holding such a folder (``huggingface_hub.snapshot_download``); ``push_to_hub`` uploads one
(``HfApi.upload_folder``). The ``vitp`` command runs one as well: ``vitp predict --config
DIR/vitp_config.yaml --data.init_args.path photos/`` (its paths resolved against DIR, its weights
loaded; :func:`folder_of_config`). Loading builds the model with the ``vitp`` CLI's own parser (same links,
same classes) with Lightning's start-up messages silenced (:func:`quiet_lightning`).

``resolve_config_paths`` and ``checkpoint_overrides`` serve ``Segmenter.from_checkpoint``: paths in
a training config (e.g. the proposer's ``model: outputs/...``) that do not exist from the working
directory are looked up next to the config file and the checkpoint (and their parents).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from vitp.checkpoint_heads import label_space_to_dict

CONFIG_FILE, LABEL_SPACE_FILE, MANIFEST_FILE = "vitp_config.yaml", "label_space.json", "vitp_pretrained.json"
CLASSIFIER_FILE, PROPOSER_FILE, PROPOSER_DIR = "classifier.safetensors", "proposer.safetensors", "proposer"
FORMAT = "vitp-pretrained"
QUIET_TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                 "enable_progress_bar": False, "enable_model_summary": False}


class PretrainedError(ValueError):
    """A pretrained folder is missing, incomplete or not a vitp model (the message names it)."""


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational start-up lines (seed, accelerators, logger tips), the
    "LightningCLI's args parameter" warning and transformers' weight-loading progress bar while a
    model is built in-process; warnings and errors still show."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                                              "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    bar = hf_logging.is_progress_bar_enabled()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------ from_checkpoint
def _string_leaves(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _string_leaves(value, f"{prefix}.{key}")
    elif isinstance(node, str):
        yield prefix, node


def _looks_like_path(value: str) -> bool:
    return ("/" in value or os.sep in value) and not os.path.isabs(value) and "://" not in value


def resolve_config_paths(configs: Sequence[str | os.PathLike], anchors: Sequence[str | os.PathLike]) -> list[str]:
    """``--key /absolute/path`` overrides for the relative paths in the configs' ``model`` sections
    that do not exist from the working directory but exist from one of ``anchors`` or their parents
    (tried in order: each anchor, then its parent, ...). Hub ids and existing paths are left alone."""
    bases: list[Path] = []
    for anchor in anchors:
        for base in (Path(anchor).resolve(), *Path(anchor).resolve().parents):
            if base not in bases:
                bases.append(base)
    found: dict[str, str] = {}
    for config in configs:
        data = yaml.safe_load(Path(config).read_text()) or {}
        for key, value in _string_leaves(data.get("model"), "model"):
            if not _looks_like_path(value) or Path(value).exists():
                continue
            for base in bases:
                if (base / value).exists():
                    found[key] = str(base / value)
                    break
    return [x for key, value in found.items() for x in (f"--{key}", value)]


def _data_class(configs: Sequence[str | os.PathLike], overrides: Sequence[str]) -> Any:
    """The data module class the configs (and ``--data.class_path`` overrides) name, or None."""
    import importlib

    name = None
    for config in configs:
        data = (yaml.safe_load(Path(config).read_text()) or {}).get("data")
        if isinstance(data, dict) and data.get("class_path"):
            name = data["class_path"]
    args = list(overrides)
    for i, arg in enumerate(args[:-1]):
        if arg in ("--data", "--data.class_path"):
            name = args[i + 1]
    if not name or "." not in name:
        return None
    module, _, cls = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None


def checkpoint_overrides(configs: Sequence[str | os.PathLike], ckpt_path: str | os.PathLike,
                         checkpoint: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Extra ``vitp`` arguments for ``Segmenter.from_checkpoint``: config paths resolved next to the
    checkpoint (its own run first) and then the config files, and the checkpoint's own label space (when it stores one and
    the data module takes ``label_space``)."""
    from vitp.data.datamodule import SegmentationDataModule

    # the checkpoint's own run first: a config's folder (e.g. the repository) may hold another run's
    # files under the same relative path (make demo's proposer beside a test's own)
    anchors = [Path(ckpt_path).parent] + [Path(c).parent for c in configs]
    extra = resolve_config_paths(configs, anchors)
    data_class = _data_class(configs, overrides)
    given = any(a.startswith("--data.init_args.label_space") for a in overrides)
    if ("vitp_label_space" in checkpoint and not given and isinstance(data_class, type)
            and issubclass(data_class, SegmentationDataModule)):
        extra += ["--data.init_args.label_space", str(ckpt_path)]
    return extra


# ------------------------------------------------------------------------------------ saving
def _pop(node: dict[str, Any], *keys: str) -> None:
    for key in keys:
        node.pop(key, None)


def _model_section(module: Any, config: dict[str, Any], directory: Path) -> tuple[dict[str, Any], list[str]]:
    """The model section with the weights' outside references replaced by the folder's files (checked
    first, then the weights are written)."""
    from safetensors.torch import save_model

    from vitp.proposers import NativeProposer
    from vitp.proposers.hf_universal import HFUniversalProposer

    model = copy.deepcopy(config["model"])
    init = model.setdefault("init_args", {})
    _pop(init, "dataset_info")  # linked from the data module
    if isinstance(init.get("output"), dict):
        init["output"]["export_dir"] = None
    relative: list[str] = []
    pinit = init["proposer"].setdefault("init_args", {})
    _pop(pinit, "num_classes", "class_names", "is_thing")  # linked
    hf = isinstance(module.proposer, HFUniversalProposer)  # its own folder: HF config + model.safetensors
    if hf:
        pinit.update(model=PROPOSER_DIR)
        # the weights come from the folder (its head fits): no preset, no trunk initialisation on top
        for key, value in (("preset", None), ("trunk_checkpoint", None)):
            if key in pinit:
                pinit[key] = value
        relative.append("model.init_args.proposer.init_args.model")
    elif isinstance(module.proposer, NativeProposer):  # the resolved architecture as init arguments
        pinit.update(model=None, architecture=copy.deepcopy(module.proposer.arch))
    if module.classifier is not None:
        cinit = init["classifier"].setdefault("init_args", {})
        for key, value in (("checkpoint_path", None), ("pretrained", False)):
            if key in cinit:
                cinit[key] = value
    outside = [f"{k}: {v}" for k, v in _string_leaves(model, "model")
               if _looks_like_path(v) and Path(v).exists() and k not in relative]
    if outside:
        raise PretrainedError(f"{directory}: the model config refers to files outside the folder ({', '.join(outside)}); "
                              "their content would not travel with it")
    if hf:
        module.proposer.save_pretrained(directory / PROPOSER_DIR)
    elif module.proposer.state_dict():
        save_model(module.proposer, str(directory / PROPOSER_FILE))
    if module.classifier is not None:
        save_model(module.classifier, str(directory / CLASSIFIER_FILE))
    return model, relative


def save_pretrained(module: Any, datamodule: Any, config: dict[str, Any], directory: str | os.PathLike,
                    metrics: dict[str, float] | None = None, training: dict[str, Any] | None = None) -> Path:
    """Write ``module`` (a ``ViTPModule``) as a pretrained folder (module docstring).

    ``config``: the run's parsed config (``model`` section; the ``data`` one is not copied: only the
    data module's evaluation transform is); ``metrics``: measured metrics for the model card (default:
    those of ``training``); ``training``: the run's description (``vitp.callbacks.training_record``:
    the training data, its last ``val/`` and ``test/`` metrics; default: none).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    training = dict(training or {})
    if metrics is not None:
        training["metrics"] = dict(metrics)
    # metrics with nothing to measure (e.g. AP of a size range without objects) are NaN: null in
    # the JSON (NaN is not JSON), "-" on the card
    training["metrics"] = {str(k): (float(v) if v is not None and math.isfinite(float(v)) else None)
                           for k, v in (training.get("metrics") or {}).items()}
    model, relative = _model_section(module, config, directory)
    data_args = {"label_space": LABEL_SPACE_FILE, "image_size": int(datamodule.image_size),
                 "size_divisor": int(datamodule.size_divisor), "pad_to_square": bool(datamodule.pad_to_square),
                 "mean": [float(x) for x in datamodule.mean], "std": [float(x) for x in datamodule.std],
                 "eval_batch_size": int(datamodule.eval_batch_size), "num_workers": 0}
    full = {"seed_everything": False, "trainer": dict(QUIET_TRAINER), "model": model,
            "data": {"class_path": "vitp.data.SegmentationDataModule", "init_args": data_args}}
    header = "# vitp pretrained model: vitp.Segmenter.from_pretrained(<this folder>); paths relative to it\n"
    (directory / CONFIG_FILE).write_text(header + yaml.safe_dump(full, sort_keys=False))
    (directory / LABEL_SPACE_FILE).write_text(json.dumps(label_space_to_dict(module.dataset_info), indent=2) + "\n")
    manifest = {"format": FORMAT, "version": 1, "relative_paths": relative + ["data.init_args.label_space"],
                "training": training}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    from vitp.model_card import model_card

    (directory / "README.md").write_text(model_card(module, model, data_args, training))
    return directory


# ------------------------------------------------------------------------------------ loading
def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


def local_folder(source: str | os.PathLike, revision: str | None = None) -> Path:
    """``source`` itself when it is a folder, else the local copy of the hub repo ``source``."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_absolute() or str(source).startswith(".") or str(source).count("/") != 1:
        raise PretrainedError(f"{source}: no such folder (nor a Hugging Face hub id 'owner/name')")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(source), revision=revision))


def folder_of_config(configs: Sequence[Any] | None) -> Path | None:
    """The pretrained folder whose ``vitp_config.yaml`` is among the ``--config`` files of a ``vitp``
    command (the last one), or None: ``vitp predict --config DIR/vitp_config.yaml`` runs that model."""
    found = None
    for config in configs or []:
        path = Path(str(getattr(config, "absolute", config)))
        if path.name == CONFIG_FILE and (path.parent / MANIFEST_FILE).is_file():
            found = path.parent.resolve()
    return found


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise PretrainedError(f"{folder}: not a vitp pretrained folder ({MANIFEST_FILE} missing; write one with "
                              "Segmenter.save_pretrained or `vitp fit --export_pretrained DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("relative_paths"), list):
        raise PretrainedError(f"{path}: not a vitp pretrained manifest (format {manifest.get('format')!r})")
    return manifest


def resolve_folder_paths(config: Any, folder: Path) -> None:
    """Point the folder's relative paths (its manifest's ``relative_paths``: the HF proposer's folder,
    the label space) into ``folder`` in a parsed ``vitp`` namespace, in place; a value changed on the
    command line (not the folder config's own) is left as given."""
    saved = yaml.safe_load((folder / CONFIG_FILE).read_text())
    for key in _manifest(folder)["relative_paths"]:
        try:
            value, own = config[key], _lookup(saved, key)
        except (KeyError, TypeError):
            continue
        if isinstance(value, str) and value == own and not os.path.isabs(value):
            config[key] = str(folder / value)


def load_folder_weights(module: Any, folder: Path) -> None:
    """The folder's safetensors weights into ``module`` (a ``ViTPModule`` built from its config); a
    missing or mismatched file is named."""
    from safetensors.torch import load_model

    for name, part in (("classifier", module.classifier), ("proposer", module.proposer)):
        path = folder / (CLASSIFIER_FILE if name == "classifier" else PROPOSER_FILE)
        if part is not None and path.is_file():
            try:
                load_model(part, str(path), strict=True)
            except Exception as e:  # noqa: BLE001 (shapes / keys: RuntimeError; a truncated file: SafetensorError)
                raise PretrainedError(f"{path}: cannot load the {name} weights ({type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[0][:300]})") from e
        elif name == "classifier" and part is not None:
            raise PretrainedError(f"{path}: missing (the config has a classifier)")


def load_pretrained(source: str | os.PathLike, device: str = "cpu", revision: str | None = None,
                    **kwargs: Any) -> Any:
    """The ``vitp.Segmenter`` of a pretrained folder or hub repo (module docstring); ``kwargs`` go
    to the Segmenter (e.g. ``batch_size``). The ``vitp`` CLI builds it from the folder's config,
    resolving its paths against the folder and loading its weights (``vitp.cli_hooks``)."""
    from vitp.api import Segmenter
    from vitp.cli import cli

    folder = local_folder(source, revision).resolve()
    manifest = _manifest(folder)
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    with quiet_lightning():
        built = cli(["--config", str(folder / CONFIG_FILE)], run=False)
    seg = Segmenter.from_cli(built, device=device, **kwargs)
    seg.config, seg.training = config, manifest.get("training") or {}
    return seg


def push_to_hub(directory: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "vitp pretrained model") -> str:
    """Upload a pretrained folder to the Hugging Face hub (creates the repo when missing); its URL."""
    from huggingface_hub import HfApi

    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise PretrainedError(f"{directory}: not a vitp pretrained folder ({MANIFEST_FILE} missing)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
