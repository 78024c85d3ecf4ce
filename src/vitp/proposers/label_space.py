"""Mapping a pretrained proposer's label space onto a dataset's label space.

A proposer trained on one dataset (say COCO panoptic, 133 classes) can propose masks for another
(say ADE20K, 150 classes). Its classes are matched to the dataset's classes

* by name, after normalisation (``normalize_class_name``: lowercase, ``-merged`` / ``-other`` /
  ``-stuff`` suffixes removed, ``_`` and ``-`` read as spaces; ``"a, b"`` / ``"a;b"`` list synonyms),
* or explicitly with ``label_map`` (proposer class -> dataset class, by name or by index; a value of
  ``None`` drops the proposer class), which overrides the name matching for the classes it names.

Semantics of the mapped logits ``[..., K_dataset + 1]`` (last column = no object):

* several proposer classes mapped to one dataset class: their logits are combined with
  ``logsumexp`` (their probabilities add up under the softmax);
* proposer classes mapped to nothing: ``unmapped="drop"`` (default) removes them before the softmax
  (the remaining probabilities are renormalised); ``unmapped="void"`` folds them into the no-object
  column instead (an object of a class the dataset does not know counts as "no object");
* dataset classes that no proposer class maps to get a logit of ``-inf`` (probability 0);
* nothing mapped at all is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

_SUFFIXES = ("-merged", "-other", "-stuff", "_merged", "_other", "_stuff")


def normalize_class_name(name: str) -> str:
    """Canonical form of a class name used for matching (``"wall-other-merged"`` -> ``"wall"``)."""
    s = str(name).strip().lower()
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if s.endswith(suffix) and len(s) > len(suffix):
                s = s[: -len(suffix)]
                changed = True
    s = re.sub(r"[_\-]+", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def class_name_synonyms(name: str) -> list[str]:
    """Normalised synonyms of a class name: the full name first, then each ``,``/``;`` part."""
    out = [normalize_class_name(name)]
    for part in re.split(r"[;,]", str(name)):
        n = normalize_class_name(part)
        if n and n not in out:
            out.append(n)
    return out


def _resolve(key, names: Sequence[str] | None, count: int, what: str) -> int:
    """Index of ``key`` (an int index, a digit string, or a class name) in ``names``."""
    if isinstance(key, bool):
        raise TypeError(f"label_map: invalid {what} class {key!r}")
    if isinstance(key, int):
        idx = key
    else:
        key_s = str(key)
        idx = -1
        if names is not None:
            norm = normalize_class_name(key_s)
            exact = [i for i, n in enumerate(names) if str(n) == key_s]
            if exact:
                idx = exact[0]
            else:
                by_norm = [i for i, n in enumerate(names) if norm in class_name_synonyms(n)]
                if by_norm:
                    idx = by_norm[0]
        if idx < 0 and key_s.lstrip("-").isdigit():
            idx = int(key_s)
        if idx < 0:
            known = list(names)[:20] if names is not None else []
            raise KeyError(f"label_map: unknown {what} class {key!r} (known, first 20: {known})")
    if not 0 <= idx < count:
        raise KeyError(f"label_map: {what} class index {idx} out of range 0..{count - 1}")
    return idx


def build_label_mapping(
    source_names: Sequence[str],
    target_names: Sequence[str] | None = None,
    num_target: int | None = None,
    label_map: Mapping | None = None,
    match_by_name: bool = True,
) -> list[int]:
    """For each proposer (source) class, the dataset (target) class it maps to, or -1.

    ``source_names``: the proposer's class names (``config.id2label`` in index order).
    ``target_names``: the dataset's class names (needed for name matching and name-valued maps).
    ``num_target``: number of dataset classes (defaults to ``len(target_names)``).
    ``label_map``: explicit proposer -> dataset entries (names or indices; ``None`` value = drop).
    """
    if num_target is None:
        if target_names is None:
            raise ValueError("build_label_mapping needs target_names or num_target")
        num_target = len(target_names)
    if target_names is not None and len(target_names) != num_target:
        raise ValueError(f"{len(target_names)} dataset class names but num_target={num_target}")
    num_source = len(source_names)
    mapping = [-1] * num_source

    if match_by_name and target_names is not None:
        target_syn = [class_name_synonyms(n) for n in target_names]
        exact: dict[str, int] = {}
        for t, syn in enumerate(target_syn):
            exact.setdefault(syn[0], t)
        for s, name in enumerate(source_names):
            syn = class_name_synonyms(name)
            if syn[0] in exact:  # full-name match first
                mapping[s] = exact[syn[0]]
                continue
            for t, tsyn in enumerate(target_syn):  # then any shared synonym
                if set(syn) & set(tsyn):
                    mapping[s] = t
                    break

    for key, value in (label_map or {}).items():
        s = _resolve(key, source_names, num_source, "proposer")
        mapping[s] = -1 if value is None else _resolve(value, target_names, num_target, "dataset")

    if all(m < 0 for m in mapping):
        raise NoClassMaps(
            "no proposer class maps to any dataset class. Proposer classes "
            f"(first 10): {list(source_names)[:10]}; dataset classes (first 10): "
            f"{list(target_names)[:10] if target_names is not None else f'{num_target} unnamed'}"
        )
    return mapping


class NoClassMaps(ValueError):
    """``build_label_mapping`` found no proposer class for any dataset class."""


class LabelSpaceMapper(nn.Module):
    """Turns proposer class logits ``[..., K_src + 1]`` into dataset logits ``[..., K_dst + 1]``.

    See the module docstring for the semantics (logsumexp merge, dropped / void unmapped classes,
    ``-inf`` for dataset classes without a proposer class).
    """

    def __init__(
        self, source_to_target: Sequence[int], num_target: int, unmapped: Literal["drop", "void"] = "drop"
    ) -> None:
        super().__init__()
        if unmapped not in ("drop", "void"):
            raise ValueError(f"unmapped must be 'drop' or 'void', got {unmapped!r}")
        self.num_source = len(source_to_target)
        self.num_target = num_target
        self.unmapped = unmapped
        s2t = torch.as_tensor(list(source_to_target), dtype=torch.long)
        if (s2t >= num_target).any():
            raise ValueError("source_to_target has indices >= num_target")
        self.source_to_target = s2t.tolist()
        groups = [[s for s in range(self.num_source) if s2t[s] == t] for t in range(num_target)]
        width = max(1, max(len(g) for g in groups))
        # gather table [K_dst, width] of source columns, padded with column index 0 and a validity mask
        table = torch.zeros(num_target, width, dtype=torch.long)
        valid = torch.zeros(num_target, width, dtype=torch.bool)
        for t, g in enumerate(groups):
            table[t, : len(g)] = torch.tensor(g, dtype=torch.long)
            valid[t, : len(g)] = True
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("has_source", valid.any(1), persistent=False)
        self.register_buffer("dropped", s2t < 0, persistent=False)
        self.is_identity = num_target == self.num_source and s2t.tolist() == list(range(num_target))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.num_source + 1:
            raise ValueError(f"expected {self.num_source + 1} class logits, got {logits.shape[-1]}")
        if self.is_identity:
            return logits
        cls, void = logits[..., :-1], logits[..., -1:]
        gathered = cls[..., self.table]  # [..., K_dst, width]
        # finite filler (no NaN gradients); -inf is put only where a class has no source at all
        filler = torch.finfo(logits.dtype).min / 4
        gathered = torch.where(self.valid, gathered, torch.full_like(gathered, filler))
        merged = torch.logsumexp(gathered, dim=-1)
        merged = merged.masked_fill(~self.has_source, float("-inf"))
        if self.unmapped == "void" and bool(self.dropped.any()):
            void = torch.logsumexp(torch.cat([void, cls[..., self.dropped]], dim=-1), dim=-1, keepdim=True)
        return torch.cat([merged, void], dim=-1)

    def extra_repr(self) -> str:
        return f"num_source={self.num_source}, num_target={self.num_target}, unmapped={self.unmapped!r}"


def agnostic_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[..., K + 1]`` -> ``[..., 2]``: (object = logsumexp of the K classes, no object)."""
    return torch.stack([torch.logsumexp(logits[..., :-1], dim=-1), logits[..., -1]], dim=-1)
