"""The annotation-cost table: seconds per annotation of each kind, with the published source.

The annotation-budget study (``vitp study annotation-budget``) prices every training image by the
annotations its supervision source needs: one per (non-crowd) segment of the image, times the
seconds below (``k`` clicks per segment cost ``k x click``). Override any entry with
``--costs FILE`` (YAML or JSON): ``{fine_mask: 60}`` or ``{fine_mask: {seconds: 60, source: "my
team's timing"}}``; entries not named keep their default. Unknown keys are an error.

The defaults, and how far each was checked (issue 24 asked to check the figures it quoted; we had
no copy of the papers themselves, only their abstracts / introductions and papers quoting them):

* ``fine_mask`` 79.2 s per segment. Lin et al. 2014, "Microsoft COCO: Common Objects in Context"
  (ECCV): "over 22 worker hours per 1,000 segmentations" = 79.2 s per instance polygon. Confirmed
  as "79.2 seconds per instance ... in COCO" by Cheng et al. 2022, "Pointly-Supervised Instance
  Segmentation" (CVPR), and as 79 s by Bearman et al. 2016 (who also quote 54 s from another study).
* ``box`` 7.0 s per box. Papadopoulos, Uijlings, Keller, Ferrari 2017, "Extreme clicking for
  efficient object annotation" (ICCV): 7 s per box by clicking the object's four extreme points
  (about 34.5 s drawn the traditional way, their estimate). The 7 s is confirmed by Cheng et al.
  2022 ("11 times faster, in only 7 seconds"); the 34.5 s is from memory.
* ``click`` 2.4 s per point. Bearman, Russakovsky, Ferrari, Fei-Fei 2016, "What's the Point:
  Semantic Segmentation with Point Supervision" (ECCV). NOT verified: the figures we could confirm
  are per image on PASCAL VOC (22.1 s for point-level supervision, which includes the image-level
  class labels, against 239.7 s for full supervision); 2.4 s per click is our recollection of the
  paper, and the issue's "about 1-2 s" could not be confirmed either. Check it, or override it.
* ``coarse_mask`` 6.2 s per segment. Derived, not measured: Cordts et al. 2016, "The Cityscapes
  Dataset for Semantic Urban Scene Understanding" (CVPR): more than 1.5 h per image for the fine
  annotations (confirmed by Papadopoulos, Weber, Torralba 2021, "Scaling up instance annotation via
  label propagation") and a budget of under 7 min per image for the coarse ones (from memory). We
  scale ``fine_mask`` by 7 / 90 (= 0.078); transferring Cityscapes' per-image ratio to COCO-style
  segments is our assumption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class AnnotationCost:
    """Seconds for one annotation of a kind, what one annotation is, and where the figure comes from."""

    seconds: float
    unit: str
    source: str


DEFAULT_COSTS: dict[str, AnnotationCost] = {
    "fine_mask": AnnotationCost(79.2, "segment (polygon)", "Lin et al. 2014 (COCO), Sec. 4: 22 worker hours "
                                "per 1,000 instance segmentations"),
    "coarse_mask": AnnotationCost(round(79.2 * 7 / 90, 2), "segment (coarse polygon)",
                                  "derived: fine_mask x 7 min / 90 min, the coarse / fine time per image of "
                                  "Cordts et al. 2016 (Cityscapes)"),
    "box": AnnotationCost(7.0, "box (extreme clicking)", "Papadopoulos et al. 2017, extreme clicking "
                          "(34.5 s drawn the traditional way)"),
    "click": AnnotationCost(2.4, "point click", "Bearman et al. 2016, What's the Point (per-click figure not "
                            "verified: check before quoting)"),
}
"""The built-in cost table (see the module docstring for the sources and what was checked)."""


def load_costs(path: str | Path | None = None) -> dict[str, AnnotationCost]:
    """The cost table: :data:`DEFAULT_COSTS` with the entries of ``path`` (YAML or JSON) overriding
    them. An entry is a number (seconds) or a mapping with ``seconds`` and optionally ``unit`` /
    ``source``; an override without ``source`` is marked "user override (FILE)"."""
    costs = dict(DEFAULT_COSTS)
    if path is None:
        return costs
    path = Path(path)
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the cost table must be a mapping of annotation kind -> seconds")
    for key, value in data.items():
        if key not in costs:
            raise ValueError(f"{path}: unknown annotation kind {key!r}; expected some of {sorted(costs)}")
        entry = value if isinstance(value, dict) else {"seconds": value}
        unknown = set(entry) - {"seconds", "unit", "source"}
        if unknown or "seconds" not in entry:
            raise ValueError(f"{path}: {key}: expected a number or {{seconds, unit, source}}, got {value!r}")
        seconds = float(entry["seconds"])
        if seconds < 0:
            raise ValueError(f"{path}: {key}: seconds must be >= 0, got {seconds}")
        costs[key] = replace(costs[key], seconds=seconds, unit=str(entry.get("unit", costs[key].unit)),
                             source=str(entry.get("source", f"user override ({path})")))
    return costs


def costs_markdown(costs: dict[str, AnnotationCost]) -> str:
    """The table as markdown (written beside every annotation-budget result)."""
    lines = ["| annotation | seconds | per | source |", "|---|---:|---|---|"]
    lines += [f"| {k} | {c.seconds:g} | {c.unit} | {c.source} |" for k, c in costs.items()]
    return "\n".join(lines) + "\n"
