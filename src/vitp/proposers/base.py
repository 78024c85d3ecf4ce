"""The ``MaskProposer`` interface and the name -> class registry.

A proposer is a pure ``nn.Module`` (no Lightning) that turns a padded image batch into ``Q``
mask proposals (see ``vitp.structures.Proposals``). Proposers that can be trained expose
``loss(proposals, targets)``.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from vitp.structures import Proposals, Target

TASKS = ("semantic", "instance", "panoptic")

_REGISTRY: dict[str, type["MaskProposer"]] = {}
P = TypeVar("P", bound=type["MaskProposer"])


def register_proposer(name: str) -> Callable[[P], P]:
    """Class decorator adding a proposer to the registry under ``name``."""

    def wrap(cls: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"proposer name {name!r} is already registered to {_REGISTRY[name]}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_proposers() -> dict[str, type["MaskProposer"]]:
    """All registered proposers, name -> class (built-in ones imported on first call)."""
    from vitp.proposers import load_all_proposers

    load_all_proposers()
    return dict(_REGISTRY)


def build_proposer(name: str, **kwargs) -> "MaskProposer":
    """Instantiate a registered proposer by name."""
    if name not in _REGISTRY:
        list_proposers()
    if name not in _REGISTRY:
        raise KeyError(f"unknown proposer {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


class MaskProposer(nn.Module):
    """Base class of mask proposers.

    Subclasses set ``self.num_classes`` (``None`` when class-agnostic) and implement ``forward``.
    ``needs_targets`` is True for proposers that read the ground truth (the oracle);
    ``task_conditioned`` is True when the proposals depend on the task (OneFormer).

    The ``vitp`` CLI links the dataset's label space into every proposer, so a proposer's
    ``__init__`` accepts ``num_classes: int | None``, ``class_names: list[str] | None`` and
    ``is_thing: list[bool] | None`` (it may ignore the last two).
    """

    num_classes: int | None = None
    needs_targets: bool = False
    task_conditioned: bool = False

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        """True when the proposer implements ``loss`` and has trainable parameters."""
        return type(self).loss is not MaskProposer.loss and any(
            p.requires_grad for p in self.parameters()
        )

    def loss(self, proposals: Proposals, targets: list[Target]) -> dict[str, torch.Tensor]:
        """Training losses (name -> scalar); the key ``loss`` is the total to optimise."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task
