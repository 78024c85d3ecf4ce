"""Loading a checkpoint whose class-sized layers do not fit the data's label space.

The classifier head (K or K+1 outputs) and a proposer's class layers (K+1, semantic K) are sized by
the data module's label space. ``ViTPModule.on_load_checkpoint`` (``vitp test/validate/predict
--ckpt_path``, ``LightningModule.load_from_checkpoint``, ``vitp.Segmenter.from_checkpoint``) checks
every tensor's shape first, so a checkpoint trained on another label space gives an error naming
the parameters, their shapes and the way out, instead of torch's bare size mismatch, or, with
``reinit_heads_on_mismatch``, keeps those layers' fresh initialisation and loads the rest.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

OPTION = "model.init_args.reinit_heads_on_mismatch"


def _class_sized(found: tuple[int, ...], expected: tuple[int, ...], num_classes: int) -> bool:
    """Same rank, and every dimension that differs is K or K+1 ("no object") in the model."""
    differ = [e for f, e in zip(found, expected) if f != e]
    return len(found) == len(expected) and bool(differ) and all(e in (num_classes, num_classes + 1) for e in differ)


def reconcile_head_shapes(model: nn.Module, state_dict: dict[str, Any], num_classes: int,
                          reinit: bool) -> list[str]:
    """Compare ``state_dict``'s tensor shapes with ``model``'s.

    Returns the class-sized entries replaced (in ``state_dict``, in place) by the model's own fresh
    tensors when ``reinit`` is True (strict loading then still checks every other entry); raises
    ``ValueError`` on any other shape mismatch, and on class-sized ones when ``reinit`` is False.
    """
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
        if not others:
            message += (f" To load everything else and start those layers afresh (fine-tuning or evaluating on "
                        f"the new label space), set {OPTION}=true (--{OPTION} true).")
    if others:
        message += (f"\nNot a class-count difference ({', '.join(others)}): the checkpoint comes from another "
                    "architecture; check the model section of the config.")
    raise ValueError(message)


def reconcile_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """``ViTPModule.on_load_checkpoint``: the shape check above, refusing to resume a fit (optimizer
    state included) into re-initialised heads, whose optimizer state could not follow."""
    heads = reconcile_head_shapes(module, checkpoint["state_dict"], module.dataset_info.num_classes,
                                  module.reinit_heads_on_mismatch)
    if heads and "optimizer_states" in checkpoint and module._trainer is not None and module.trainer.state.fn == "fit":
        raise ValueError(
            "`fit --ckpt_path` resumes the optimizer too, whose state cannot follow re-initialised heads; to fine-tune "
            "on a new label space, start a new fit from the weights, e.g. --model.init_args.classifier.init_args."
            "checkpoint_path CKPT --model.init_args.classifier.init_args.reinit_head true")
