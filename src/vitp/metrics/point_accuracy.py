"""The classifier's accuracy on labelled points (validation / test), in percent."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class PointAccuracy(nn.Module):
    """Micro accuracy over all points, and the macro means over all, thing and stuff classes seen
    (by any process under DDP): ``point_acc``, ``point_acc_macro``, ``point_acc_thing``,
    ``point_acc_stuff``. Labels -1 are ignored; logits beyond K (no object) are not predicted."""

    def __init__(self, num_classes: int, is_thing: torch.Tensor) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("is_thing", is_thing.bool().clone(), persistent=False)
        self.accuracy = nn.ModuleDict({
            average: MulticlassAccuracy(num_classes, average=average, ignore_index=-1)
            for average in ("micro", "none")
        })

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        preds = logits[..., : self.num_classes].argmax(-1).flatten()
        for metric in self.accuracy.values():
            metric.update(preds, labels.flatten())

    def compute_and_reset(self) -> dict[str, float]:
        """The accuracies (empty when nothing was updated), then a reset."""
        micro, per_class_metric = self.accuracy["micro"], self.accuracy["none"]
        if not micro.update_called:
            return {}
        results = {"point_acc": 100.0 * float(micro.compute())}
        per_class = 100.0 * per_class_metric.compute().cpu()
        with per_class_metric.sync_context():  # classes seen by any process (DDP)
            seen = per_class_metric.tp.cpu() + per_class_metric.fn.cpu() > 0
        thing = self.is_thing.cpu()
        for key, select in (("macro", seen), ("thing", seen & thing), ("stuff", seen & ~thing)):
            if select.any():
                results[f"point_acc_{key}"] = float(per_class[select].mean())
        for metric in self.accuracy.values():
            metric.reset()
        return results
