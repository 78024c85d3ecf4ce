"""Loading weights whose class-sized layers do not fit the data's label space: one switch.

The classifier head (K or K+1 outputs) and a proposer's class layers (K+1, semantic K) are sized by
the data module's label space. Weights come in three ways, and ``ViTPModule``'s one switch
``reinit_heads_on_mismatch`` (:data:`OPTION`) decides for all of them whether class-sized layers
trained on another label space are re-initialised (fine-tuning on new classes) or refused with an
error naming the layers, their shapes and the way out:

* ``--ckpt_path`` / ``load_from_checkpoint``: ``ViTPModule.on_load_checkpoint`` ->
  :func:`reconcile_checkpoint` (never re-initialised outside ``fit``: random heads give random classes);
* the classifier's own ``checkpoint_path``: ``PointClassifier.set_num_classes(C, reinit_heads)``,
  called by the module;
* a pretrained HF proposer (``model``) whose classes neither ``class_names`` nor ``label_map`` map onto
  the data's: the proposer records a :class:`HeadMismatch`, and :func:`fit_proposer_head` (called by the
  module) replaces its class head or raises.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitp.structures import IGNORE_INDEX, DatasetInfo, HeadMismatch

OPTION = "model.init_args.reinit_heads_on_mismatch"


def _class_sized(found: tuple[int, ...], expected: tuple[int, ...], num_classes: int) -> bool:
    """Same rank, and every dimension that differs is K or K+1 ("no object") in the model."""
    differ = [e for f, e in zip(found, expected) if f != e]
    return len(found) == len(expected) and bool(differ) and all(e in (num_classes, num_classes + 1) for e in differ)


def reconcile_head_shapes(model: nn.Module, state_dict: dict[str, Any], num_classes: int,
                          reinit: bool, fitting: bool = True) -> list[str]:
    """Compare ``state_dict``'s tensor shapes with ``model``'s.

    Returns the class-sized entries replaced (in ``state_dict``, in place) by the model's own fresh
    tensors when ``reinit`` is True (strict loading then still checks every other entry); raises
    ``ValueError`` on any other shape mismatch, and on class-sized ones when ``reinit`` is False.
    ``fitting=False`` (predict, test, validate, the Python API): fresh heads would give random classes
    without an error, so class-sized mismatches always raise, whatever ``reinit``.
    """
    reinit = reinit and fitting
    own = model.state_dict()
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape}
    if not shapes:
        return []
    heads = [k for k, (found, expected) in shapes.items() if _class_sized(found, expected, num_classes)]
    others = [k for k in shapes if k not in heads]
    if heads and not others and reinit:
        for k in heads:
            state_dict[k] = own[k]
        warnings.warn(f"checkpoint class-sized layers do not fit the data's {num_classes} classes; keeping their "
                      f"fresh initialisation ({OPTION}=true): {', '.join(heads)}", UserWarning)
        return heads
    lines = [f"  {k}: checkpoint {list(found)}, model {list(expected)}" for k, (found, expected) in shapes.items()]
    message = "checkpoint tensors do not fit the model's shapes:\n" + "\n".join(lines)
    if heads:
        message += (f"\nThe class-sized layers ({', '.join(heads)}) follow the label space: the data module has "
                    f"{num_classes} classes (layers sized K, or K+1 with 'no object'); the checkpoint was trained "
                    "on another.")
        if not others and fitting:
            message += (f" To load everything else and start those layers afresh (fine-tuning on the new label "
                        f"space), set {OPTION}=true (--{OPTION} true).")
        elif not others:
            message += (" Outside `fit` the class-sized layers are never re-initialised (they would give random "
                        "classes): build the model in the checkpoint's label space (`vitp predict/test --ckpt_path` "
                        "reads it from checkpoints that store one; otherwise give the training data's root).")
    if others:
        message += (f"\nNot a class-count difference ({', '.join(others)}): the checkpoint comes from another "
                    "architecture; check the model section of the config.")
    raise ValueError(message)


def fit_proposer_head(proposer: Any, reinit: bool) -> None:
    """The module's check of a proposer's :class:`HeadMismatch` (``proposer.head_mismatch``): with
    ``reinit`` its class head is replaced by a fresh one for the data's classes, otherwise an error."""
    mismatch = proposer.head_mismatch
    if mismatch is None:
        return
    if not reinit:
        raise ValueError(proposer_head_message(mismatch))
    warnings.warn(f"{mismatch.part} ({mismatch.source}): {mismatch.detail}; training a fresh class head "
                  f"({OPTION}=true)", UserWarning)
    proposer.reinit_class_head()


def proposer_head_message(mismatch: HeadMismatch) -> str:
    """The error of a pretrained proposer whose class head does not fit and may not be replaced."""
    return (f"{mismatch.part} ({mismatch.source}): {mismatch.detail}. Give class_names matching the proposer's "
            f"classes or a label_map, or set {OPTION}=true (--{OPTION} true) to train a fresh class head on the "
            "data's classes.")


def classifier_head_message(found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """The error of a classifier checkpoint whose head does not fit (``PointClassifier`` loading)."""
    return (f"head shape {found} in the checkpoint differs from the model's {expected} (different num_classes?); "
            f"set {OPTION}=true (--{OPTION} true) to re-initialise it (in Python: "
            "PointViT.load_checkpoint(source, reinit_head=True))")


def reconcile_checkpoint(module: nn.Module, checkpoint: dict[str, Any], num_classes: int, reinit: bool,
                         fitting: bool, resuming_fit: bool) -> None:
    """``ViTPModule.on_load_checkpoint``: the shape check above (``fitting=False``: ``validate`` /
    ``test`` / ``predict``, heads never re-initialised), refusing to resume a fit (``resuming_fit``,
    optimizer state included) into re-initialised heads, whose optimizer state could not follow."""
    heads = reconcile_head_shapes(module, checkpoint["state_dict"], num_classes, reinit, fitting=fitting)
    if heads and "optimizer_states" in checkpoint and resuming_fit:
        raise ValueError(
            "`fit --ckpt_path` resumes the optimizer too, whose state cannot follow re-initialised heads; to fine-tune "
            "on a new label space, start a new fit from the weights, e.g. --model.init_args.classifier.init_args."
            f"checkpoint_path CKPT --{OPTION} true")


# ---------------------------------------------------------------------------------- reading, label space
LABEL_SPACE_KEY = "vitp_label_space"
"""Checkpoint entry holding the label space the model was trained on (``ViTPModule.on_save_checkpoint``)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a checkpoint (the message names the file)."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file (tensors memory-mapped, no pickled code), with errors that
    name the file: missing, truncated / corrupt, or not a dictionary."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (zip / pickle / torch errors alike)
        size = path.stat().st_size
        raise CheckpointError(f"{path}: cannot read the checkpoint ({size} bytes): the file is truncated, corrupt "
                              f"or not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, expected a dictionary)")
    return checkpoint


def label_space_to_dict(info: DatasetInfo) -> dict[str, Any]:
    """The JSON form of a label space: ``classes`` as ``{id, name, isthing}`` (COCO ``categories``)."""
    return {"classes": [{"id": int(c), "name": str(n), "isthing": bool(t)}
                        for c, n, t in zip(info.category_ids, info.class_names, info.is_thing)],
            "ignore_index": int(info.ignore_index)}


def label_space_from_dict(data: dict[str, Any], source: str) -> DatasetInfo:
    """Inverse of :func:`label_space_to_dict` (``source`` names the file in errors)."""
    try:
        classes = data["classes"]
        return DatasetInfo(tuple(str(c["name"]) for c in classes), tuple(int(c["id"]) for c in classes),
                           tuple(bool(c["isthing"]) for c in classes), int(data.get("ignore_index", IGNORE_INDEX)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: malformed label space ({type(e).__name__}: {e})") from e


def checkpoint_label_space(checkpoint: dict[str, Any], source: str) -> DatasetInfo | None:
    """The label space stored in a checkpoint (None for checkpoints written before vitp stored it)."""
    data = checkpoint.get(LABEL_SPACE_KEY)
    return None if data is None else label_space_from_dict(data, source)


def read_label_space(path: str | os.PathLike) -> DatasetInfo:
    """The label space of a checkpoint (``.ckpt``), a pretrained folder (its ``label_space.json``)
    or a label-space JSON; an error naming the file when it has none."""
    path = Path(path)
    if path.is_dir():
        path = path / "label_space.json"
    if path.suffix == ".json":
        if not path.is_file():
            raise CheckpointError(f"{path}: label space file not found")
        return label_space_from_dict(json.loads(path.read_text()), str(path))
    info = checkpoint_label_space(read_checkpoint(path), str(path))
    if info is None:
        raise CheckpointError(f"{path}: the checkpoint stores no label space (written before vitp stored one); "
                              "give the training data's root instead")
    return info


TRAINING_KEY = "vitp_training"
"""Checkpoint entry describing the run: the training data and the last measured metrics."""


def checkpoint_extras(dataset_info: DatasetInfo) -> dict[str, Any]:
    """What ``ViTPModule.on_save_checkpoint`` adds: the label space, so ``predict`` / ``test`` and
    the Python API need no training data on disk (the run's description: ``vitp.callbacks.TrainingRecord``)."""
    return {LABEL_SPACE_KEY: label_space_to_dict(dataset_info)}


def describe_data(datamodule: Any) -> dict[str, Any] | None:
    """The data module's class and root (None without one)."""
    if datamodule is None:
        return None
    cls = type(datamodule)
    out: dict[str, Any] = {"class_path": f"{cls.__module__}.{cls.__qualname__}"}
    if getattr(datamodule, "root", None) is not None:
        out["root"] = str(datamodule.root)
    if getattr(datamodule, "synthetic", False):
        out["generated"] = True  # vitp's procedurally generated dataset (vitp-generate)
    return out
