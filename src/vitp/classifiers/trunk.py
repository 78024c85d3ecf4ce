"""One trunk pass for both stages: ``PointViT`` in EoMT's square frame.

EoMT's queries and ViT-P's points are both tokens that join a ViT at late blocks. When the proposer's
patch tokens never read its queries (``EomtProposer(query_attention="one_way")``) and both stages
hold the same trunk weights, the tokens entering each block are the same for both: the proposer
returns them (``Proposals.trunk``, a ``TrunkStates``) and the point classifier only computes the
keys / values of the blocks its points run (``cache_from_trunk``), instead of a patch pass of its
own. ``square_trunk_states`` is that patch pass computed by the classifier itself (the "separate
trunk"): the same frame, the same tokens, so both give the same logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vitp.classifiers.vit_ops import block_forward, block_kv, self_slot_kv, self_slot_mask, square_frame
from vitp.structures import TrunkStates
from vitp.view_memo import ViewMemo
from vitp.weights.keymaps import fixed_pos_table

if TYPE_CHECKING:  # pragma: no cover
    from vitp.classifiers.point_vit import PatchCache, PointViT


def square_trunk_states(model: "PointViT", images: torch.Tensor, first_block: int,
                        memo: ViewMemo | None = None) -> TrunkStates:
    """The classifier's own trunk pass in the square frame (class token + patches, a fixed position
    table, no padding mask), keeping the tokens entering blocks ``first_block..``. With ``memo``
    (a frozen trunk), views seen before are not run again."""
    be = model.backbone
    if be.cls_token is None or be.pos_embed is None or getattr(be, "reg_token", None) is not None \
            or getattr(be, "no_embed_class", False):
        raise ValueError("frame='square' needs a ViT with a class token, a position embedding that "
                         "includes the class entry and no register tokens (DINOv2 without registers)")
    x, scale = square_frame(images, int(model.image_size))

    def compute(x: torch.Tensor) -> list[torch.Tensor]:
        tok = be.patch_embed(x)  # [B, Gh, Gw, D]
        b, gh, gw, d = tok.shape
        patches = tok.reshape(b, gh * gw, d) + fixed_pos_table(be.pos_embed, (gh, gw)).to(tok.dtype)
        seq = torch.cat([(be.cls_token + be.pos_embed[:, :1]).expand(b, -1, -1).to(tok.dtype), patches], dim=1)
        states = []
        for i, blk in enumerate(be.blocks):
            if i >= first_block:
                states.append(seq)
            if i < len(be.blocks) - 1:  # the last block's output is never read
                seq, _ = block_forward(blk, seq, None)
        return states

    states = memo(x, compute) if memo is not None else compute(x)
    ph, pw = model.patch_size
    return TrunkStates(states, first_block, 1, (x.shape[-2] // ph, x.shape[-1] // pw), scale)


def cache_from_trunk(model: "PointViT", trunk: TrunkStates, valid_sizes: torch.Tensor | None,
                     frame: tuple[int, int]) -> "PatchCache":
    """``PatchCache`` of ``model``'s blocks ``point_start_block..`` from ``trunk`` (keys / values
    only). Points read every class / patch token of their image's valid region (padding patches
    are hidden from them)."""
    from vitp.classifiers.point_vit import PatchCache

    k0 = model.point_start_block
    if trunk.first_block > k0:
        raise ValueError(f"the trunk states start at block {trunk.first_block}, after the classifier's "
                         f"point_start_block {k0} (set the proposer's share_trunk_from <= {k0})")
    states = trunk.states[k0 - trunk.first_block:]
    b = states[0].shape[0]
    gh, gw = trunk.grid
    ph, pw = model.patch_size
    device = states[0].device
    if valid_sizes is None:
        valid_sizes = torch.tensor([list(frame)] * b, device=device)
    vs = (valid_sizes.to(device).float() * trunk.scale).round().long().clamp(min=1)
    grids = torch.stack([((vs[:, 0] + ph - 1) // ph).clamp(max=gh), ((vs[:, 1] + pw - 1) // pw).clamp(max=gw)], 1)
    rows, cols = torch.arange(gh, device=device), torch.arange(gw, device=device)
    patch_mask = (rows[None, :, None] < grids[:, 0, None, None]) & (cols[None, None, :] < grids[:, 1, None, None])
    key_mask = torch.cat([patch_mask.new_ones(b, trunk.num_prefix), patch_mask.reshape(b, -1)], dim=1)
    kv = [self_slot_kv(*block_kv(blk, seq)) for blk, seq in zip(model.backbone.blocks[k0:], states)]
    entering = states[0][:, trunk.num_prefix:].reshape(b, gh, gw, -1)
    if model.point_encoding == "sample_patch":
        source = entering
    else:  # sample_pos_embed / linear: the position table of the frame
        table = fixed_pos_table(model.backbone.pos_embed, (gh, gw)).reshape(gh, gw, -1)
        source = table[None].expand(b, -1, -1, -1)
    pos_grids = [source[i, :h, :w] for i, (h, w) in enumerate(grids.tolist())]
    return PatchCache(kv=kv, key_mask=key_mask, grid=(gh, gw), image_grids=grids, valid_sizes=vs,
                      pos_grids=pos_grids, slot_mask=None if bool(key_mask.all()) else self_slot_mask(key_mask),
                      start_block=k0, images=None)
