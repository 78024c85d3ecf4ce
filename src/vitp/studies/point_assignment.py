"""``vitp study point-assignment``: inference point rules compared on the same proposals, no training.

For each checkpoint (one per training seed), the config's model is built and loaded, and every
validation batch is proposed once; each rule (``vitp.point_rules``; ``topK`` = argmax with K
points averaged, ``RULE@K`` = K points of RULE) then picks the points, the classifier reads them and
the usual post-processing runs, so the rules differ only in the point. Per rule: PQ / PQ_th / mIoU /
AP, AP per COCO object size, and the share of correctly classified proposals per object size: of
the proposals that match a non-crowd ground-truth segment (IoU >= 0.5, at the original size), the
share whose fused class is the segment's, with the segment's area in COCO's ranges (small < 32²,
medium < 96², large; in original-image pixels). The rule's cost: milliseconds per image to choose
the points and to classify them. The proposer's own classes and oracle classes are reported once
as references (they do not depend on the point).

Writes ``OUT/point_assignment.csv``, ``OUT/point_assignment.md`` and ``OUT/commands.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vitp.studies.point_eval import RuleEval, build_model, match_proposals, parse_rule, reference_rows
from vitp.studies.report import aggregate, markdown_table, write_csv
from vitp.studies.runner import Study

SHOWN = ("pq", "pq_th", "pq_st", "miou", "map", "map_small", "map_medium", "map_large",
         "acc_small", "acc_medium", "acc_large", "select_ms", "classify_ms")
DEFAULT_RULES = ("argmax", "interior", "centroid", "top3", "random")


@dataclass
class PointSettings:
    """The study's settings (see ``vitp study point-assignment --help``)."""

    config: str
    out: Path
    ckpt_paths: Sequence[str]
    rules: Sequence[str]
    seed: int
    extra: Sequence[str]


def run(settings: PointSettings, argv: Sequence[str]) -> list[dict[str, Any]]:
    """Evaluate every (checkpoint, rule) cell not finished yet; write the CSV and markdown."""
    study = Study(settings.out, "point-assignment", argv)
    for rule in settings.rules:
        parse_rule(rule)  # fail before any model is built
    rows: list[dict[str, Any]] = []
    for index, ckpt in enumerate(settings.ckpt_paths):
        ckpt_path = str(Path(ckpt).resolve())
        key = f"{settings.config}|{ckpt_path}|{settings.seed}|{list(settings.extra)}"
        wanted = ["reference", *settings.rules]
        cells = {name: f"ckpt{index}_{name.replace('@', '_at_')}" for name in wanted}
        found = {name: study.done(cells[name], key) for name in wanted}
        todo = [name for name in settings.rules if found[name] is None]
        if todo or found["reference"] is None:
            study.log(f"- evaluating {todo} (+ reference variants) of `{ckpt_path}` in this process")
            results = evaluate(settings, ckpt_path, todo, index, len(settings.ckpt_paths))
            for name, result in results.items():
                study.save(cells[name], key, result)
                found[name] = result
        else:
            study.log(f"- skipped (done earlier): every rule of `{ckpt_path}`")
        for name in wanted:
            for row in (found[name] or {}).get("rows", []):
                rows.append({"checkpoint": ckpt_path, "seed_index": index, **row})
    write(settings, rows)
    return rows


def evaluate(settings: PointSettings, ckpt: str, rules: Sequence[str], index: int, total: int) -> dict[str, Any]:
    """One pass over the validation data: ``{rule: {"rows": [row]}, "reference": {...}}``."""
    model, datamodule = build_model(settings.config, ckpt, settings.extra)
    evals = {name: RuleEval(name, model, settings.seed) for name in rules}
    refs = RuleEval("reference", model, settings.seed)
    loader = datamodule.val_dataloader()
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"point-assignment {index + 1}/{total}", unit="batch"):
            pipe = model.pipeline
            start = time.perf_counter()
            proposals = [pipe.propose(batch, tasks[0]) for tasks in pipe.task_groups()]
            refs.propose_seconds += time.perf_counter() - start
            matches = match_proposals(batch, proposals[0])
            refs.update_references(batch, proposals, matches)
            for ev in evals.values():
                ev.update(batch, proposals, matches)
    out = {name: {"rows": [ev.row()]} for name, ev in evals.items()}
    out["reference"] = {"rows": reference_rows(refs)}
    return out


def write(settings: PointSettings, rows: list[dict[str, Any]]) -> None:
    write_csv(settings.out / "point_assignment.csv", rows)
    entries = aggregate(rows, ("rule",), SHOWN)
    text = [
        "# Point assignment\n",
        f"Config `{settings.config}`; {len(settings.ckpt_paths)} checkpoint(s) (mean ± std over them); "
        "validation split; the same proposals for every rule. `acc_*`: share (%) of the proposals matching a "
        "ground-truth segment of that COCO size range whose fused class is right; `select_ms` / `classify_ms`: "
        "milliseconds per image to choose the points / run the classifier on them. `proposer` and `oracle` "
        "rows do not depend on the rule.\n",
        markdown_table(entries, ("rule", *SHOWN)),
        "\nCommands: [commands.md](commands.md); rows: [point_assignment.csv](point_assignment.csv).\n",
    ]
    (settings.out / "point_assignment.md").write_text("\n".join(text))
