"""Mask AP with COCO ``segm`` semantics (faster-coco-eval, equal to pycocotools' COCOeval)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchmetrics import Metric

from vitp.rle import label_map_rles
from vitp.structures import DatasetInfo, InstancePrediction, Target

AP_KEYS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
"""``compute()`` keys of ``MaskAP``, in the order of ``COCOeval.stats``."""

_log = logging.getLogger(__name__)


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as bytes) of ``bool[n, H, W]`` masks."""
    if isinstance(masks, Tensor):
        masks = masks.detach().to("cpu")
        masks = masks.numpy().view(np.uint8) if masks.dtype == torch.bool else masks.to(torch.uint8).numpy()
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.shape[0] == 0:
        return []
    # COCO's column-major [H, W, n] is [n, W, H] in C order: transposing mask by mask is cache-friendly
    return mask_utils.encode(np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(2, 1, 0))


def _gt_records(target: Target, is_thing: Tensor) -> list[tuple[dict, int, int, int]]:
    """``(rle, class, iscrowd, area)`` of each non-empty thing segment of a target."""
    seg = target.segments.detach().to("cpu").numpy()
    labels = target.labels.detach().to("cpu").long()
    crowd = target.is_crowd.detach().to("cpu").bool()
    things = torch.nonzero(is_thing[labels]).flatten().tolist()
    rles, areas = label_map_rles(seg, things)
    return [(rle, int(labels[i]), int(crowd[i]), area) for i, rle, area in zip(things, rles, areas) if area > 0]


class MaskAP(Metric):
    """COCO mask AP in percent (COCOeval ``iouType="segm"``, maxDets 1/10/100, COCO area ranges).

    ``update(preds, targets)`` encodes the thing segments of each target (crowd ones as
    ``iscrowd``, area = pixel count) and each predicted mask of a thing class to RLE and keeps
    them; ``compute()`` runs faster-coco-eval on everything seen (gathered from all processes with
    ``all_gather_object`` under DDP) and returns the keys of ``AP_KEYS``; a value COCOeval
    reports as -1 (nothing to evaluate) is NaN. ``compute_per_class()`` -> ``{"ap": float64[K]}``.
    Use ``update``/``compute``, not ``forward``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = True

    def __init__(self, dataset_info: DatasetInfo, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dataset_info = dataset_info
        self._is_thing_cpu = dataset_info.thing_mask()
        # per-process records; not torchmetrics states (those would have to be tensors of equal
        # count on every rank), gathered explicitly in compute()
        self._images: list[tuple[tuple, tuple[int, int], list, list]] = []
        self._last_eval: Any = None

    def update(self, preds: Sequence[InstancePrediction], targets: Sequence[Target]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            size = tuple(int(s) for s in target.segments.shape[-2:])
            gts = _gt_records(target, self._is_thing_cpu)
            labels = pred.labels.detach().to("cpu").long()
            keep = self._is_thing_cpu[labels] if labels.numel() else labels.bool()
            masks = pred.masks[keep.to(pred.masks.device)]
            if masks.shape[-2:] != size and masks.shape[0] > 0:
                raise ValueError(
                    f"instance masks of size {tuple(masks.shape[-2:])} do not match the ground truth "
                    f"of size {size} (both must be at the original image size)"
                )
            rles = encode_masks(masks)
            scores = pred.scores.detach().to("cpu").double()[keep].tolist()
            dts = [(r, int(c), s) for r, c, s in zip(rles, labels[keep].tolist(), scores)]
            self._images.append((_sort_key(target.image_id), size, gts, dts))

    def reset(self) -> None:
        super().reset()
        self._images = []
        self._last_eval = None

    def forward(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.update(*args, **kwargs)

    def _gathered(self) -> list:
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
            and self.sync_on_compute
        ):
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self._images)
            images = [img for part in parts for img in part]
        else:
            images = list(self._images)
        # COCOeval breaks score ties by image order: sort by image id, as COCO does with its
        # imgIds, so the result does not depend on how images were split across processes.
        images.sort(key=lambda record: record[0])
        return [record[1:] for record in images]

    def coco_dicts(self) -> tuple[dict, list[dict]]:
        """The ground truth as a COCO dataset dict and the predictions as a COCO results list
        (image ids 1.., category id = contiguous class + 1, RLE counts as str)."""
        k = self.dataset_info.num_classes
        images, anns, results = [], [], []
        for img_id, ((h, w), gts, dts) in enumerate(self._gathered(), start=1):
            images.append({"id": img_id, "height": h, "width": w})
            boxes = mask_utils.toBbox([g[0] for g in gts]).tolist() if gts else []
            for (rle, c, crowd, area), box in zip(gts, boxes):
                rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
                anns.append({
                    "id": len(anns) + 1, "image_id": img_id, "category_id": c + 1, "iscrowd": crowd,
                    "area": float(area), "segmentation": rle, "bbox": box,
                })  # fmt: skip
            for rle, c, s in dts:
                rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
                results.append({"image_id": img_id, "category_id": c + 1, "segmentation": rle, "score": s})
        cats = [{"id": i + 1, "name": str(i)} for i in range(k) if self.dataset_info.is_thing[i]]
        return {"images": images, "annotations": anns, "categories": cats}, results

    def _evaluate(self) -> Any:
        from faster_coco_eval import COCO, COCOeval_faster

        gt_dict, results = self.coco_dicts()
        quiet = _log.debug
        gt = COCO(gt_dict, print_function=quiet)
        dt = gt.loadRes(results)
        ev = COCOeval_faster(gt, dt, iouType="segm", print_function=quiet)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        self._last_eval = ev
        return ev

    def compute(self) -> dict[str, Tensor]:
        ev = self._evaluate()
        stats = np.asarray(ev.stats[: len(AP_KEYS)], dtype=np.float64)
        stats = np.where(stats < 0, np.nan, stats * 100.0)
        return {key: torch.tensor(v, dtype=torch.float64) for key, v in zip(AP_KEYS, stats)}

    def compute_per_class(self) -> dict[str, Tensor]:
        """``ap`` (AP@[.5:.95], area all, 100 detections) as ``float64[K]`` in percent; NaN for
        stuff classes and classes without ground truth."""
        ev = self._last_eval if self._last_eval is not None else self._evaluate()
        k = self.dataset_info.num_classes
        ap = torch.full((k,), float("nan"), dtype=torch.float64)
        prec = np.asarray(ev.eval["precision"])  # [T, R, K', A, M]
        for j, cat_id in enumerate(ev.params.catIds):
            p = prec[:, :, j, 0, -1]
            p = p[p > -1]
            if p.size:
                ap[cat_id - 1] = float(p.mean()) * 100.0
        return {"ap": ap}


def _sort_key(image_id: Any) -> tuple:
    """Orders int ids numerically and anything else by its string."""
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))
