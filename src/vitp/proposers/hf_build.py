"""Building HF ``*ForUniversalSegmentation`` models for the proposers, offline-friendly.

* config presets: ``swin_backbone`` and ``merge_config_dict`` (overrides merged into a preset);
* ``from_preset`` (random init) and ``from_pretrained`` (hub id or local directory, optionally
  with a fresh class head);
* vitp's metadata next to a saved model (``save_meta`` / ``read_meta``: which proposer, which
  tokenizer);
* OneFormer's task-text tokenizers: the model's own HF tokenizer, or ``HashTokenizer`` for
  random-initialised models (``load_task_tokenizer`` picks one).
"""

from __future__ import annotations

import copy
import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

VITP_META_FILE = "vitp_proposer.json"


# --------------------------------------------------------------------------------------- configs
def merge_config_dict(base: dict, overrides: Mapping | None) -> dict:
    """``base`` updated with ``overrides``; a ``backbone_config`` dict is merged key by key unless
    the override names a different ``model_type`` (then it replaces the preset's backbone)."""
    out = copy.deepcopy(base)
    for k, v in (overrides or {}).items():
        if (
            k == "backbone_config"
            and isinstance(v, Mapping)
            and isinstance(out.get(k), dict)
            and v.get("model_type", out[k].get("model_type")) == out[k].get("model_type")
        ):
            out[k] = {**out[k], **dict(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def swin_backbone(embed_dim: int, depths: list[int], num_heads: list[int], window_size: int = 7) -> dict:
    """A Swin backbone config dict with the 4 stages Mask2Former/OneFormer read."""
    return {
        "model_type": "swin",
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "drop_path_rate": 0.0,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


def label_config(labels: Sequence[str]) -> dict[str, dict]:
    """``id2label`` / ``label2id`` of a HF config for these class names."""
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


# --------------------------------------------------------------------------------------- building
def from_preset(model_class: Any, config_class: Any, presets: Mapping[str, dict], preset: str,
                config_overrides: Mapping | None, labels: Sequence[str]) -> Any:
    """A random-initialised ``model_class`` of the named preset (with overrides) for ``labels``."""
    from transformers import AutoConfig

    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    cfg = merge_config_dict(presets[preset], config_overrides)
    if isinstance(cfg.get("backbone_config"), dict):
        backbone = dict(cfg["backbone_config"])
        cfg["backbone_config"] = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
    return model_class(config_class(**{**cfg, **label_config(labels)}))


def from_pretrained(model_class: Any, source: str, config_overrides: Mapping | None,
                    head_labels: Sequence[str] | None = None) -> Any:
    """``model_class.from_pretrained(source)`` (hub id or directory); with ``head_labels`` the
    class head is replaced by a fresh one for these classes."""
    kwargs = dict(config_overrides or {})
    if head_labels is not None:
        kwargs.update(num_labels=len(head_labels), ignore_mismatched_sizes=True, **label_config(head_labels))
    return model_class.from_pretrained(source, **kwargs)


def save_meta(directory: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Write vitp's metadata next to a ``save_pretrained`` model."""
    (Path(directory) / VITP_META_FILE).write_text(json.dumps(dict(meta), indent=2))


def read_meta(model: str | None) -> dict:
    """vitp's metadata of a local model directory (``{}`` for hub ids and foreign directories)."""
    if model is None or not os.path.isdir(model):
        return {}
    f = Path(model) / VITP_META_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


# --------------------------------------------------------------------------------------- text
class HashTokenizer:
    """Offline stand-in for OneFormer's CLIP tokenizer, for random-initialised models only.

    Words get stable ids ``crc32(word) % (vocab_size - 3) + 1``; ``bos = vocab_size - 2`` and
    ``eos = vocab_size - 1`` (the highest id, as in CLIP: OneFormer's text encoder pools the
    ``argmax`` token); padding is 0.
    """

    kind = "hash"

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 8:
            raise ValueError("HashTokenizer needs vocab_size >= 8")
        self.vocab_size = vocab_size

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        out = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = re.findall(r"\w+|[^\w\s]", text.lower())
            ids = [zlib.crc32(w.encode()) % (self.vocab_size - 3) + 1 for w in words]
            ids = [self.vocab_size - 2, *ids[: max_length - 2], self.vocab_size - 1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class HFTextTokenizer:
    """Wraps a HF tokenizer the way ``OneFormerProcessor`` uses it (ids * attention mask)."""

    kind = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True)
        ids = torch.as_tensor(tok["input_ids"], dtype=torch.long)
        return ids * torch.as_tensor(tok["attention_mask"], dtype=torch.long)


def load_task_tokenizer(
    model: str | None, tokenizer: str | None, pretrained: bool, texts: Sequence[str], max_length: int,
    vocab_size: int,
) -> HashTokenizer | HFTextTokenizer:
    """The tokenizer of ``tokenizer`` (a directory / hub id) or else of ``model``; a
    ``HashTokenizer`` for random-initialised models without one (or saved with one).

    A HF tokenizer is used only when it tells ``texts`` apart without unknown tokens; a
    ``pretrained`` model without a usable one is an error (it needs its CLIP tokenizer).
    """
    meta = read_meta(model)
    source = tokenizer or model
    err: Exception | str | None = None
    if source is not None and not (tokenizer is None and meta.get("tokenizer") == "hash"):
        try:
            from transformers import AutoTokenizer

            tok = HFTextTokenizer(AutoTokenizer.from_pretrained(source))
            if _usable(tok, texts, max_length):
                return tok
            err = "it has no usable vocabulary"
        except Exception as e:  # noqa: BLE001 - any failure to load means "no tokenizer here"
            err = e
    if pretrained and meta.get("tokenizer") != "hash":
        raise RuntimeError(
            f"OneFormerProposer: no tokenizer could be loaded from {source!r} ({err}); a pretrained "
            "OneFormer needs its CLIP tokenizer for the task token (pass tokenizer=<dir or hub id>)"
        )
    return HashTokenizer(vocab_size)


def _usable(tok: HFTextTokenizer, texts: Sequence[str], length: int) -> bool:
    """True when the tokenizer tells ``texts`` apart without unknown tokens (transformers may
    build an empty tokenizer from a directory that has none)."""
    try:
        ids = tok.encode(texts, length)
    except Exception:  # noqa: BLE001
        return False
    unk = getattr(tok.tokenizer, "unk_token_id", None)
    special = set(getattr(tok.tokenizer, "all_special_ids", []) or [])
    words = [set(row.tolist()) - {0} - special for row in ids]
    if unk is not None and any(unk in w for w in words):
        return False
    return len({tuple(r.tolist()) for r in ids}) == len(texts) and all(len(w) >= 2 for w in words)
