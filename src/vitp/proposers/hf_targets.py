"""Ground truth in the form HF's Mask2Former / OneFormer losses read, and the DDP-aware normaliser.

* ``targets_to_hf``: our ``Target`` list -> HF ``mask_labels`` / ``class_labels`` (crowd segments
  excluded, as Mask2Former's dataset mappers do; task-specific ground truth as OneFormer builds it).
* ``global_num_masks``: the mask-loss normaliser summed over DDP processes (``torch.distributed``),
  which HF only does under ``accelerate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from vitp.structures import Target, check_task


def targets_to_hf(
    targets: Sequence[Target],
    task: str | Sequence[str] = "panoptic",
    is_thing: Sequence[bool] | None = None,
    class_agnostic: bool = False,
    keep_class: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Our targets -> HF ``(mask_labels float[N,H,W], class_labels long[N])`` per image.

    Masks stay in the input frame (the padded batch size; HF samples points in normalised
    coordinates, so the resolution need not match the mask logits). Crowd segments are excluded.
    ``task``: ``"panoptic"`` keeps every segment; ``"semantic"`` merges the segments of each class
    into one mask; ``"instance"`` keeps thing classes only (all classes if ``is_thing`` is None).
    ``keep_class``: optional ``bool[K]``; segments of classes marked False are excluded (dataset
    classes that a mapped pretrained proposer cannot predict). ``class_agnostic``: all labels 0.
    """
    tasks = [task] * len(targets) if isinstance(task, str) else list(task)
    if len(tasks) != len(targets):
        raise ValueError(f"{len(tasks)} tasks for {len(targets)} targets")
    thing = None if is_thing is None else torch.as_tensor(list(is_thing), dtype=torch.bool)
    mask_labels, class_labels = [], []
    for t, tk in zip(targets, tasks):
        check_task(tk)
        masks, labels = t.masks.bool(), t.labels.long()
        keep = ~t.is_crowd.bool().to(masks.device)
        if keep_class is not None and labels.numel():
            keep &= keep_class.to(labels.device)[labels]
        if tk == "instance" and thing is not None and labels.numel():
            keep &= thing.to(labels.device)[labels]
        masks, labels = masks[keep], labels[keep]
        if tk == "semantic" and labels.numel():
            uniq = torch.unique(labels)
            masks = torch.stack([masks[labels == c].any(0) for c in uniq])
            labels = uniq
        if class_agnostic:
            labels = torch.zeros_like(labels)
        mask_labels.append(masks.to(dtype))
        class_labels.append(labels)
    return mask_labels, class_labels


def global_num_masks(num_local: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Mask-loss normaliser: the number of target masks averaged over DDP processes, at least 1.

    Every process divides its summed per-mask losses by ``sum_over_ranks(num_masks) / world_size``;
    DDP then averages the gradients over ranks, so the effective loss is the sum of all per-mask
    losses divided by the total number of masks, as in the reference Mask2Former (which all-reduces
    via detectron2). Without an initialised process group this is ``max(num_local, 1)``.
    """
    n = torch.as_tensor(num_local, dtype=torch.float, device=device).reshape(())
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world > 1:
            n = n.clone()
            dist.all_reduce(n, op=dist.ReduceOp.SUM)
    return torch.clamp(n / world, min=1.0)
