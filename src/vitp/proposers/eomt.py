"""EoMT (HF ``EomtForUniversalSegmentation``) as a vitp mask proposer, its trunk from DINOv2.

EoMT ("Your ViT is Secretly an Image Segmentation Model") is a plain ViT whose last ``num_blocks``
blocks also carry ``num_queries`` learned query tokens; each query gives a class and, by a dot
product with the up-scaled patch tokens, a mask. vitp builds it from a preset (random init) or a
saved / hub model, and initialises the trunk (patch and position embedding, blocks, final norm)
from DINOv2 weights in any format ``vitp.classifiers.loading`` reads (``trunk_checkpoint``; the
offline file is written by ``vitp weights dinov2-small``).

Two ways the queries meet the patches (``query_attention``):

* ``"full"``: HF's own forward (queries and patches attend to each other in the last blocks);
  trained on the final prediction only (HF's forward does not return the per-block ones);
* ``"one_way"`` (default): queries read the patches, patches never read the queries, so the patch
  tokens are exactly the trunk's (a frozen DINOv2 stays DINOv2) and, with ``freeze: backbone``, the
  patch pass runs without autograd and only the queries' path is back-propagated — the cheap recipe
  for a CPU (a frozen DINOv2 with trained queries). Every block with queries is supervised, its
  masks read from the final up-scaled patch tokens.

EoMT's grid is fixed (``image_size / patch_size``): each padded batch is resized (aspect kept) so
its long side is ``image_size``, padded to a square, and the masks are cropped back to the frame.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import EomtConfig, EomtForUniversalSegmentation

from vitp.classifiers.vit_ops import square_frame
from vitp.proposers.hf_universal import HFUniversalProposer
from vitp.structures import DecoderLayerOutput, Proposals, TrunkStates
from vitp.view_memo import ViewMemo

log = logging.getLogger(__name__)

_VIT_SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "patch_size": 14,
              "layerscale_value": 1.0, "num_register_tokens": 0, "layer_norm_eps": 1e-6}
EOMT_PRESETS: dict[str, dict] = {
    # DINOv2 ViT-S/14 trunk (initialise it with trunk_checkpoint), 4 blocks with 50 queries
    "vit-small": {**_VIT_SMALL, "image_size": 224, "num_blocks": 4, "num_queries": 50, "train_num_points": 4096},
    # tests: 2 blocks of width 32
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14,
             "image_size": 56, "num_blocks": 1, "num_queries": 8, "num_register_tokens": 0,
             "train_num_points": 256},
}


class EomtProposer(HFUniversalProposer):
    """EoMT proposer. Arguments beyond ``HFUniversalProposer``'s:

    Args:
        preset: ``vit-small`` (DINOv2 ViT-S/14 shape) or ``tiny`` (tests).
        trunk_checkpoint: DINOv2 weights for the trunk (timm / original / HF names, safetensors or
            torch file) of a new model (``preset``); every trunk tensor must be found (queries and
            heads stay new). Ignored with ``model``, whose trunk is saved with it.
        image_size: the square input side (a multiple of the patch size); None = the config's.
        num_blocks: blocks that carry queries; None = the preset's.
        num_queries: None = the preset's.
        query_attention: ``one_way`` (patches never read queries) or ``full`` (HF's forward).
        share_trunk_from: with ``one_way``, return the tokens entering every block from this one
            on (``Proposals.trunk``), so a point classifier with the same trunk reads them instead
            of running its own patch pass (``PointViT(frame="square")``). None = do not share.
        trunk_cache_size: with a frozen trunk and ``one_way``, keep the trunk tokens of up to this
            many training views in memory, keyed by the exact bytes of each view, so a view seen
            again (same image, flip and frame; e.g. training without scale jitter) skips the trunk.
            The tokens are those the trunk computes (up to the last bits of batched arithmetic). About
            ``(num_blocks + 1) * tokens * width * 4`` bytes a view (2 MB for ViT-S at 224 px). 0 = off.
        freeze: ``backbone`` freezes the trunk (embeddings, blocks, final norm).
    """

    hf_model_class = EomtForUniversalSegmentation
    hf_config_class = EomtConfig
    presets = EOMT_PRESETS
    proposer_name = "eomt"

    def __init__(
        self,
        model: str | None = None,
        num_classes: int | None = None,
        preset: Literal["vit-small", "tiny"] | None = None,
        trunk_checkpoint: str | None = None,
        image_size: int | None = None,
        num_blocks: int | None = None,
        num_queries: int | None = None,
        query_attention: Literal["one_way", "full"] = "one_way",
        share_trunk_from: int | None = None,
        trunk_cache_size: int = 0,
        config_overrides: dict | None = None,
        class_agnostic: bool = False,
        label_map: dict[str, str | None] | dict[int, int | None] | None = None,
        class_names: list[str] | None = None,
        match_by_name: bool = True,
        unmapped: Literal["drop", "void"] = "drop",
        freeze: Literal["none", "backbone", "all"] = "none",
        is_thing: list[bool] | None = None,
    ) -> None:
        if query_attention not in ("one_way", "full"):
            raise ValueError(f"query_attention must be 'one_way' or 'full', got {query_attention!r}")
        overrides = dict(config_overrides or {})
        for key, value in (("image_size", image_size), ("num_blocks", num_blocks), ("num_queries", num_queries)):
            if value is not None:
                overrides[key] = value
        super().__init__(model=model, num_classes=num_classes, preset=preset,  # type: ignore[arg-type]
                         config_overrides=overrides, class_agnostic=class_agnostic, label_map=label_map,
                         class_names=class_names, match_by_name=match_by_name, unmapped=unmapped,
                         freeze="none", is_thing=is_thing)
        cfg = self.hf.config
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
        self._after_load()
        self.query_attention = query_attention
        if share_trunk_from is not None and (query_attention != "one_way" or
                                             not 0 <= share_trunk_from < cfg.num_hidden_layers):
            raise ValueError(f"share_trunk_from={share_trunk_from} needs query_attention='one_way' and a block "
                             f"in [0, {cfg.num_hidden_layers - 1}]")
        self.share_trunk_from = share_trunk_from
        self.trunk_cache_size = int(trunk_cache_size)
        self._trunk_memo = ViewMemo(self.trunk_cache_size)
        if trunk_checkpoint and model is None:
            self.load_trunk(trunk_checkpoint)
        elif trunk_checkpoint:  # a saved model carries its (possibly fine-tuned) trunk
            log.info("EomtProposer: trunk_checkpoint ignored, the trunk comes with model=%s", model)
        self.apply_freeze(freeze)

    # ----------------------------------------------------------------------------- trunk
    def _after_load(self) -> None:
        self.hf.attn_mask_probs.zero_()  # no masked attention: EoMT's end state of mask annealing

    def load_trunk(self, source: str) -> None:
        """Initialise the trunk from DINOv2 weights (see ``vitp.weights.keymaps.timm_to_eomt``)."""
        import timm

        from vitp.classifiers.loading import _filter_backbone, _split, read_state_dict
        from vitp.weights.keymaps import timm_to_eomt

        cfg = self.hf.config
        fmt, backbone, _, _, _ = _split(read_state_dict(source))
        if "pos_embed" not in backbone:
            raise RuntimeError(f"{source}: no position embedding for the EoMT trunk ({fmt} checkpoint)")
        side = int(round((backbone["pos_embed"].shape[1] - 1) ** 0.5))  # the checkpoint's own grid
        reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                      embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers,
                                      num_heads=cfg.num_attention_heads, patch_size=cfg.patch_size,
                                      img_size=side * cfg.patch_size)
        backbone = _filter_backbone(backbone, reference)  # original / HF names -> timm names
        grid = (cfg.image_size // cfg.patch_size,) * 2
        try:
            mapped = timm_to_eomt(backbone, grid)
        except KeyError as err:
            raise RuntimeError(f"{source}: no {err} for the EoMT trunk ({fmt} checkpoint)") from err
        own = self.hf.state_dict()
        bad = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise RuntimeError(f"{source}: trunk entries that do not fit EoMT ({cfg.hidden_size}-d, "
                               f"{cfg.num_hidden_layers} blocks): {bad[:6]}")
        trunk = [k for k in own if self._is_trunk(k)]
        missing = [k for k in trunk if k not in mapped and "register_tokens" not in k]
        if missing:
            raise RuntimeError(f"{source}: trunk entries missing: {missing[:6]}")
        self.hf.load_state_dict(mapped, strict=False)
        log.info("EomtProposer: trunk initialised from %s (%s, %d tensors)", source, fmt, len(mapped))

    @staticmethod
    def _is_trunk(name: str) -> bool:
        return name.startswith(("embeddings.", "layers.", "layernorm."))

    def backbone_module(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.hf.embeddings, self.hf.layers, self.hf.layernorm])

    def _unused_parameters(self) -> list[torch.nn.Parameter]:
        return [self.hf.embeddings.mask_token] if hasattr(self.hf.embeddings, "mask_token") else []

    # ----------------------------------------------------------------------------- frame
    def _crop(self, masks: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
        size = int(self.hf.config.image_size)
        mh, mw = masks.shape[-2:]
        return masks[..., : max(1, round(mh * frame[0] / size)), : max(1, round(mw * frame[1] / size))]

    # ----------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, task: str = "panoptic", targets=None) -> Proposals:  # noqa: ANN001
        self._trunk: TrunkStates | None = None
        proposals = super().forward(images, task, targets)
        proposals.trunk, self._trunk = self._trunk, None
        return proposals

    def _run(self, images, tasks):
        size = int(self.hf.config.image_size)
        x, scale = square_frame(images, size)
        frame = (max(1, round(images.shape[-2] * scale)), max(1, round(images.shape[-1] * scale)))
        if self.query_attention == "full":
            out = self.hf(pixel_values=x, return_dict=True)
            return self._crop(out.masks_queries_logits, frame), out.class_queries_logits, [], None
        masks, logits, layers = self._one_way(x, scale)
        layers = [DecoderLayerOutput(self._crop(m, frame), c) for m, c in layers]
        return self._crop(masks, frame), logits, layers, None

    def _one_way(self, x: torch.Tensor, scale: float):
        """Queries read the patch tokens of the last ``num_blocks`` blocks; patches never read
        queries. Returns final masks / class logits and the earlier query blocks' predictions."""
        hf, cfg = self.hf, self.hf.config
        start = cfg.num_hidden_layers - cfg.num_blocks
        first = start if self.share_trunk_from is None else min(start, self.share_trunk_from)
        frozen = not any(p.requires_grad for p in self.backbone_module().parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if frozen and self.training and self.trunk_cache_size > 0:
                states, patches = self._cached_trunk(x, first)
            else:
                states, patches = self._trunk_pass(x, first)
        if self.share_trunk_from is not None:
            self._trunk = TrunkStates(states[self.share_trunk_from - first:], self.share_trunk_from,
                                      hf.embeddings.num_prefix_tokens, tuple(hf.grid_size), scale)
        queries = hf.query.weight[None].expand(x.shape[0], -1, -1)
        per_block = []
        for layer, seq in zip(hf.layers[start:], states[start - first:]):
            per_block.append(queries)
            queries = self._query_block(layer, queries, seq)
        grid = hf.grid_size
        pixels = hf.upscale_block(patches.transpose(1, 2).reshape(x.shape[0], -1, *grid))

        def predict(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = hf.layernorm(q)
            return torch.einsum("bqc,bchw->bqhw", hf.mask_head(q), pixels), hf.class_predictor(q)

        masks, logits = predict(queries)
        layers = [predict(q) for q in per_block[1:]] if self.training else []
        return masks, logits, layers

    def _trunk_pass(self, x: torch.Tensor, first: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The patch pass: tokens entering blocks ``first..`` and the final normalised patch tokens."""
        hf = self.hf
        tokens = hf.embeddings(x)
        states = []
        for i, layer in enumerate(hf.layers):
            if i >= first:
                states.append(tokens)
            tokens = layer(tokens)
        return states, hf.layernorm(tokens)[:, hf.embeddings.num_prefix_tokens:]

    def _cached_trunk(self, x: torch.Tensor, first: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``_trunk_pass`` remembered per view (``ViewMemo`` on the exact bytes of its square-frame
        input): a frozen trunk is a pure function of them, so a repeated view (same image, flip and
        frame) gives the same tokens without running the trunk again."""

        def compute(images: torch.Tensor) -> list[torch.Tensor]:
            states, patches = self._trunk_pass(images, first)
            return [*states, patches]

        *states, patches = self._trunk_memo(x, compute)
        return states, patches

    @staticmethod
    def _query_block(layer, queries: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """One EoMT block for the query tokens alone: they attend to [queries ; ``seq``]."""
        attn = layer.attention
        b, q, d = queries.shape
        heads, hd = attn.num_heads, attn.head_dim
        nq, ns = layer.norm1(queries), layer.norm1(seq)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, heads, hd).transpose(1, 2)

        keys = torch.cat([split(attn.k_proj(nq)), split(attn.k_proj(ns))], dim=2)
        values = torch.cat([split(attn.v_proj(nq)), split(attn.v_proj(ns))], dim=2)
        out = F.scaled_dot_product_attention(split(attn.q_proj(nq)), keys, values, scale=attn.scale)
        queries = queries + layer.layer_scale1(attn.out_proj(out.transpose(1, 2).reshape(b, q, d)))
        return queries + layer.layer_scale2(layer.mlp(layer.norm2(queries)))
