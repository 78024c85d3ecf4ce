"""What the ``vitp`` command does around Lightning's own ``fit`` / ``test`` / ``predict``.

* before the classes are built (:func:`prepare_run`): ``--ckpt_path`` is read once, so a missing,
  truncated or corrupt checkpoint stops with an error naming the file; ``validate`` / ``test`` /
  ``predict`` build the model in the label space stored in the checkpoint
  (``data.init_args.label_space``), so no training data is needed to predict on your own images;
  ``predict`` without ``model.init_args.output.export_dir`` writes to ``<default_root_dir>/predictions``;
  a pretrained folder's ``vitp_config.yaml`` as ``--config`` runs that model (its relative paths
  resolved against the folder, its safetensors weights loaded once the model is built).
* after ``fit`` (:func:`after_fit`): a run too short for its checkpoint callback to have saved
  anything (e.g. validation every 10 epochs, 1 epoch run) saves ``last.ckpt`` in the callback's
  folder; the checkpoints are named; ``--export_pretrained DIR`` writes the shareable folder.
* after ``test`` / ``predict`` (:func:`report_exports`): where the files went.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SPECIAL_CKPT = ("best", "last", "hpc", "registry")  # Lightning's ckpt_path keywords


def _get(namespace: Any, dotted: str) -> Any:
    node = namespace
    for key in dotted.split("."):
        if node is None or not hasattr(node, "__contains__") or key not in node:
            return None
        node = node[key]
    return node


def prepare_run(subcommand: str | None, config: Any) -> Path | None:
    """See the module docstring (``config``: the subcommand's parsed namespace, changed in place).
    Returns the pretrained folder whose ``vitp_config.yaml`` is a ``--config`` of the run (its paths
    now point into it; :func:`load_pretrained_weights` loads its weights once the model is built), or None."""
    from vitp.checkpoint_heads import checkpoint_label_space, read_checkpoint
    from vitp.pretrained import folder_of_config, resolve_folder_paths

    folder = folder_of_config(_get(config, "config"))
    if folder is not None:
        resolve_folder_paths(config, folder)
    ckpt = _get(config, "ckpt_path")
    if ckpt and str(ckpt).split(":")[0] not in SPECIAL_CKPT:
        info = checkpoint_label_space(read_checkpoint(ckpt), str(ckpt))
        data_args = _get(config, "data.init_args")
        if (subcommand in ("validate", "test", "predict") and info is not None and data_args is not None
                and "label_space" in data_args and data_args["label_space"] is None):
            data_args["label_space"] = str(ckpt)
    output = _get(config, "model.init_args.output")
    if subcommand == "predict" and output is not None and "export_dir" in output and not output["export_dir"]:
        root = _get(config, "trainer.default_root_dir") or os.getcwd()
        output["export_dir"] = str(Path(root) / "predictions")
    if subcommand == "predict" and "return_predictions" in config and config["return_predictions"] is None:
        config["return_predictions"] = False  # written to files as they come (PredictionFiles), not kept
    return folder


CONFIG_MODE = "vitp"
"""The ``vitp`` parsers' ``parser_mode``: YAML read by :func:`load_config`."""


def load_config(text: str, path: str | os.PathLike = "") -> Any:
    """jsonargparse's ``yaml`` loader, except that a pretrained folder's ``vitp_config.yaml`` (``path``)
    written before the native proposer's options were grouped, or with the parts' own ``reinit_head``
    switches, reads as the current options do (``vitp.settings.upgrade_pretrained_config``): such a
    folder still loads; a hand-written config with the old options is refused by
    :func:`check_renamed_options`."""
    from jsonargparse import get_loader

    from vitp.pretrained import CONFIG_FILE, MANIFEST_FILE
    from vitp.settings import upgrade_pretrained_config

    value = get_loader("yaml")(text)
    path = Path(path)  # jsonargparse passes a config file's path as given on the command line
    if isinstance(value, dict) and path.name == CONFIG_FILE and (path.parent / MANIFEST_FILE).is_file():
        upgrade_pretrained_config(value.get("model"))
    return value


def check_renamed_options(args: Any) -> None:
    """Stop with the file, each renamed option and its new place when a ``--config`` file uses the
    option names from before they were grouped (``vitp.settings.renamed_options``): jsonargparse
    would only say the key is not accepted."""
    import sys

    import yaml

    from vitp.settings import renamed_options

    argv = list(sys.argv[1:] if args is None else args)
    for i, arg in enumerate(argv[:-1]):
        if arg not in ("--config", "-c"):
            continue
        path = Path(argv[i + 1])
        if not path.is_file():
            continue  # jsonargparse names a missing file itself
        try:
            config = load_config(path.read_text(), path)
        except yaml.YAMLError:
            continue  # and a broken one
        if not isinstance(config, dict):
            continue
        renamed = renamed_options(config.get("model", {}))
        renamed += [f"{key} -> model.init_args.optimization (LightningCLI's {key} would bypass vitp's parameter "
                    "groups and schedule)" for key in ("optimizer", "lr_scheduler") if key in config]
        if renamed:
            raise SystemExit(f"{path}: options renamed when the model's settings were grouped "
                             f"(docs/architecture.md#renamed-options):\n  " + "\n  ".join(renamed))


def load_pretrained_weights(model: Any, folder: Path | None) -> None:
    """After the classes are built: a pretrained folder's weights into the model (see :func:`prepare_run`)."""
    if folder is not None and model is not None:
        from vitp.pretrained import load_folder_weights

        load_folder_weights(model, folder)


def report_exports(trainer: Any, model: Any, stage: str) -> None:
    """Print where ``test`` / ``predict`` wrote their files (rank zero)."""
    export_dir = getattr(getattr(model, "output", None), "export_dir", None)
    if not export_dir or not trainer.is_global_zero:
        return
    out = Path(export_dir).resolve()
    if stage == "predict":
        n = len(list((out / "segments").glob("*.json")))
        print(f"vitp predict: {n} image(s) written to {out}: panoptic/<stem>.png + panoptic.json, "
              f"semantic/<stem>.png, segments/<stem>.json, instances.json, overlays/{{panoptic,semantic}}/<stem>.jpg")
    else:
        print(f"vitp test: predictions and metrics.json written to {out}")


def ensure_checkpoint(trainer: Any) -> list[Path]:
    """The checkpoints the fit left (saving ``last.ckpt`` when its callbacks saved none)."""
    callbacks = list(trainer.checkpoint_callbacks)
    if not callbacks:
        return []
    saved = [Path(p) for cb in callbacks for p in {cb.last_model_path, cb.best_model_path} if p]
    if not saved:
        dirpath = callbacks[0].dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
        path = Path(dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)  # every rank takes part; rank zero writes
        saved = [path]
    return sorted(set(saved))


def after_fit(trainer: Any, model: Any, datamodule: Any, config: Any) -> None:
    """See the module docstring."""
    saved = ensure_checkpoint(trainer)
    if trainer.is_global_zero:
        for path in saved:
            print(f"vitp fit: checkpoint {path.resolve()}")
        if not saved:
            print("vitp fit: no checkpoint written (trainer.enable_checkpointing is false)")
    export = _get(config, "export_pretrained")
    if export:
        from vitp.callbacks import training_record
        from vitp.pretrained import save_pretrained

        if trainer.is_global_zero:
            save_pretrained(model, datamodule, config_to_dict(config), export, training=training_record(trainer))
            print(f"vitp fit: pretrained model written to {Path(export).resolve()} "
                  "(vitp.Segmenter.from_pretrained loads it)")
        trainer.strategy.barrier("vitp-export-pretrained")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A parsed (sub)command namespace as plain YAML-able data."""
    data = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
