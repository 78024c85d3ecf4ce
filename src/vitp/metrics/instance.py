"""Mask AP with COCO ``segm`` semantics (faster-coco-eval, equal to pycocotools' COCOeval)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchmetrics import Metric

from vitp.rle import instance_rles, label_map_rles, mask_stack_rles
from vitp.structures import DatasetInfo, InstancePrediction, PanopticPrediction, Target

AP_KEYS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
"""``compute()`` keys of ``MaskAP``, in the order of ``COCOeval.stats``."""

_log = logging.getLogger(__name__)


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as bytes) of ``bool[n, H, W]`` masks (each read only inside its
    bounding box: :func:`vitp.rle.mask_stack_rles`)."""
    if isinstance(masks, Tensor):
        masks = masks.detach().to("cpu")
        masks = masks.numpy() if masks.dtype == torch.bool else masks.numpy().astype(bool)
    return mask_stack_rles(np.asarray(masks).astype(bool, copy=False))


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
    them. A prediction is an ``InstancePrediction`` (at the image size or held smaller) or a
    ``PanopticPrediction``, whose thing segments are then the detections (score = the segment's,
    empty segments left out; all encoded in one pass over its label map); ``compute()`` runs faster-coco-eval on everything seen (gathered from all processes with
    ``all_gather_object`` under DDP) and returns the keys of ``AP_KEYS``; a value COCOeval
    reports as -1 (nothing to evaluate) is NaN. ``compute_per_class()`` -> ``{"ap": float64[K]}``.
    Use ``update``/``compute``, not ``forward``; ``merge_state`` adds another process's images.
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

    def update(self, preds: Sequence[InstancePrediction | PanopticPrediction], targets: Sequence[Target]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            size = tuple(int(s) for s in target.segments.shape[-2:])
            gts = _gt_records(target, self._is_thing_cpu)
            self._images.append((_sort_key(target.image_id), size, gts, self._detections(pred, size)))

    def _detections(self, pred: InstancePrediction | PanopticPrediction, size: tuple) -> list[tuple]:
        """``(rle, class, score)`` of each thing-class detection of one image."""
        if isinstance(pred, PanopticPrediction):
            seg = pred.segments.detach().to("cpu")
            if tuple(seg.shape) != size:
                raise ValueError(f"panoptic prediction of size {tuple(seg.shape)} does not match the "
                                 f"ground truth of size {size} (both must be at the original image size)")
            labels = pred.labels.detach().to("cpu").long()
            things = torch.nonzero(self._is_thing_cpu[labels]).flatten().tolist() if labels.numel() else []
            rles, areas = label_map_rles(seg.numpy(), things)  # each thing segment in one pass
            scores = pred.scores.detach().to("cpu").double().tolist()
            return [(r, int(labels[i]), scores[i]) for i, r, a in zip(things, rles, areas) if a > 0]
        if tuple(pred.size) != size:
            raise ValueError(
                f"instance masks of size {tuple(pred.size)} do not match the ground truth of size {size} "
                "(both must be at the original image size)"
            )
        labels = pred.labels.detach().to("cpu").long()
        keep = self._is_thing_cpu[labels] if labels.numel() else labels.bool()
        masks = pred.masks[keep.to(pred.masks.device)]
        scores = pred.scores.detach().to("cpu").double()[keep]
        if pred.image_size is None:
            rles = encode_masks(masks)
        else:  # held at post-processing size: encoded from the small masks
            rles = list(instance_rles(InstancePrediction(masks, labels[keep], scores, pred.image_size)))
        scores = scores.tolist()
        return [(r, int(c), s) for r, c, s in zip(rles, labels[keep].tolist(), scores)]

    def reset(self) -> None:
        super().reset()
        self._images = []
        self._last_eval = None

    def merge_state(self, incoming_state: "MaskAP | dict[str, Any]") -> None:
        """Add the images another ``MaskAP`` saw (e.g. one updated in another process on another
        part of the data; ``compute()`` then equals one metric updated on all of it). A dict holds
        them under ``"images"`` (the records of another metric's ``_images``)."""
        if isinstance(incoming_state, MaskAP):
            if incoming_state.dataset_info != self.dataset_info:
                raise ValueError("merge_state: the other MaskAP has another label space")
            images = incoming_state._images
        elif isinstance(incoming_state, dict) and "images" in incoming_state:
            images = incoming_state["images"]
        else:
            raise ValueError(f"merge_state takes a MaskAP or a dict with 'images', got {type(incoming_state).__name__}")
        self._images.extend(images)
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
