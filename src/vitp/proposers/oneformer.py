"""OneFormer (HF ``OneFormerForUniversalSegmentation``) as a task-conditioned vitp mask proposer.

The task token is the text ``"the task is {semantic|instance|panoptic}"`` tokenised to
``config.task_seq_len`` ids (OneFormer feeds the raw ids, as floats, to an MLP). The tokenizer is the
one stored with the model (hub repo or local directory: ``AutoTokenizer``, offline-friendly);
random-initialised models without one use ``HashTokenizer`` (recorded by ``save_pretrained`` so a
reload tokenises identically). A pretrained model without a loadable tokenizer is an error.

When ``config.is_training`` is true (the model has OneFormer's text encoder) the query-text
contrastive loss is added in ``loss``; the texts are built from the ground truth as HF's image
processor does (``"a photo with a {class}"`` per segment, padded with ``"a{n} {task} photo"``).
The HF model's own forward never runs the text encoder here (``hf.model.is_training`` is switched
off), so inference needs no texts; ``loss`` runs the text mapper itself.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

from vitp.proposers.hf_build import HFTextTokenizer, load_task_tokenizer, swin_backbone
from vitp.proposers.hf_universal import HFUniversalProposer
from vitp.structures import TASKS, DecoderLayerOutput, check_task


_COMMON = {"use_pretrained_backbone": False}

ONEFORMER_PRESETS: dict[str, dict] = {
    "tiny": {
        **_COMMON,
        "backbone_config": swin_backbone(16, [1, 1, 1, 1], [1, 1, 2, 2]),
        "conv_dim": 32,
        "mask_dim": 32,
        "hidden_dim": 32,
        "encoder_feedforward_dim": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "query_dec_layers": 1,
        "num_attention_heads": 2,
        "dim_feedforward": 64,
        "num_queries": 20,
        "dropout": 0.0,
        "train_num_points": 1024,
        "task_seq_len": 16,
        "text_encoder_context_length": 16,
        "text_encoder_width": 64,  # the text encoder uses width // 64 heads
        "text_encoder_num_layers": 1,
        "text_encoder_vocab_size": 512,
        "text_encoder_n_ctx": 0,  # prompt context must have width == hidden_dim
        "is_training": False,
    },
    "small": {
        **_COMMON,
        "backbone_config": swin_backbone(32, [1, 1, 2, 1], [1, 2, 4, 8]),
        "conv_dim": 64,
        "mask_dim": 64,
        "hidden_dim": 64,
        "encoder_feedforward_dim": 128,
        "encoder_layers": 2,
        "decoder_layers": 4,
        "query_dec_layers": 1,
        "num_attention_heads": 4,
        "dim_feedforward": 256,
        "num_queries": 50,
        "dropout": 0.0,
        "train_num_points": 4096,
        "task_seq_len": 16,
        "text_encoder_context_length": 16,
        "text_encoder_width": 64,
        "text_encoder_num_layers": 1,
        "text_encoder_vocab_size": 1024,
        "text_encoder_n_ctx": 4,
        "is_training": True,
    },
    # the published architecture (Swin-T backbone, text encoder on); random init, for GPUs
    "swin-tiny": {
        **_COMMON,
        "backbone_config": {**swin_backbone(96, [2, 2, 6, 2], [3, 6, 12, 24]), "drop_path_rate": 0.3},
        "is_training": True,
    },
}


class OneFormerProposer(HFUniversalProposer):
    """OneFormer proposer (HF transformers): one model, conditioned on the task token.

    The model, label space and freezing: the arguments of ``HFUniversalProposer``.

    Args:
        tokenizer: a tokenizer directory / hub id (defaults to ``model``'s own); ignored for presets
            unless given.
        train_task: ``random`` samples the task per image in training mode (as OneFormer trains),
            ``given`` uses the ``task`` passed to ``forward``.
        contrastive: add the query-text contrastive loss when the model has a text encoder.
    """

    hf_model_class = OneFormerForUniversalSegmentation
    hf_config_class = OneFormerConfig
    presets = ONEFORMER_PRESETS
    proposer_name = "oneformer"
    task_conditioned = True  # outputs depend on ``task``: run once per task
    contrastive: bool = True
    """Whether ``loss`` adds the contrastive term (set in ``__init__``; True while the base class
    builds the model, so nothing is frozen as unused before it is known)."""

    def __init__(
        self,
        tokenizer: str | None = None,
        train_task: Literal["random", "given"] = "random",
        contrastive: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if train_task not in ("random", "given"):
            raise ValueError(f"train_task must be 'random' or 'given', got {train_task!r}")
        self.train_task = train_task
        cfg = self.hf.config
        self.has_text_encoder = bool(cfg.is_training) and getattr(self.hf.model, "text_mapper", None) is not None
        self.contrastive = bool(contrastive) and self.has_text_encoder and cfg.contrastive_temperature is not None
        # never let HF's forward run the text mapper (it would require texts at inference too)
        self.hf.model.is_training = False
        texts = [f"the task is {t}" for t in TASKS]
        self.tokenizer = load_task_tokenizer(
            self.source, tokenizer, self._loaded_pretrained, texts, int(cfg.task_seq_len),
            int(cfg.text_encoder_vocab_size),
        )
        # task token ids, precomputed: [3, task_seq_len]
        self.register_buffer("task_token_ids", self.tokenizer.encode(texts, cfg.task_seq_len), persistent=False)
        self.apply_freeze(self.freeze)

    def _unused_parameters(self) -> list[torch.nn.Parameter]:
        if self.contrastive:
            return []
        params = list(self.hf.criterion.parameters())
        text_mapper = getattr(self.hf.model, "text_mapper", None)
        return params + (list(text_mapper.parameters()) if text_mapper is not None else [])

    def _extra_meta(self, directory: Path) -> dict:
        if isinstance(self.tokenizer, HFTextTokenizer):
            self.tokenizer.tokenizer.save_pretrained(directory)
        return {"tokenizer": self.tokenizer.kind}

    # ----------------------------------------------------------------------------- forward
    def _tasks_for(self, images, task):
        check_task(task)
        b = images.shape[0]
        if self.training and self.train_task == "random" and self.trainable:
            return [random.choice(TASKS) for _ in range(b)]
        return [task] * b

    def task_inputs(self, tasks: list[str], device=None) -> torch.Tensor:
        """``float[B, task_seq_len]``: the task token ids of each image, as OneFormer expects."""
        idx = torch.tensor([TASKS.index(check_task(t)) for t in tasks], device=self.task_token_ids.device)
        return self.task_token_ids[idx].to(device=device, dtype=torch.float)

    def _run(self, images, tasks):
        out = self.hf(
            pixel_values=images,
            task_inputs=self.task_inputs(tasks, images.device),
            output_auxiliary_logits=True,
            return_dict=True,
        )
        layers = [DecoderLayerOutput(a["masks_queries_logits"], a["class_queries_logits"])
                  for a in out.auxiliary_predictions or []]
        return out.masks_queries_logits, out.class_queries_logits, layers, out.transformer_decoder_contrastive_queries

    # ----------------------------------------------------------------------------- loss
    def _texts(self, tasks: list[str], class_labels: list[torch.Tensor]) -> list[list[str]]:
        cfg = self.hf.config
        num_text = cfg.num_queries - cfg.text_encoder_n_ctx
        names = self.proposer_class_names
        out = []
        for task, labels in zip(tasks, class_labels):
            article = "an" if task in ("instance", "panoptic") else "a"  # as HF ("an panoptic photo")
            texts = [f"{article} {task} photo"] * num_text
            for i, c in enumerate(sorted(labels.tolist())[:num_text]):
                texts[i] = f"a photo with a {self._class_name(c, names)}"
            out.append(texts)
        return out

    def _class_name(self, label: int, names: list[str]) -> str:
        if self.class_agnostic:
            return "object"
        if self.mapper is not None:  # dataset class -> first proposer class mapped to it
            src = self.mapper.table[label][self.mapper.valid[label]]
            return names[int(src[0])] if len(src) else f"class {label}"
        return names[label] if label < len(names) else f"class {label}"

    def _extra_losses(self, proposals, tasks, class_labels) -> dict:
        if not self.contrastive:
            return {}
        cfg = self.hf.config
        texts = self._texts(tasks, class_labels)
        ids = torch.stack([self.tokenizer.encode(t, cfg.text_encoder_context_length) for t in texts])
        device = proposals.mask_logits.device
        text_queries = self.hf.model.text_mapper(ids.to(device))
        loss = self.hf.criterion.loss_contrastive(proposals.query_embeddings, text_queries)
        return {"loss_contrastive": loss["loss_contrastive"] * cfg.contrastive_weight}

