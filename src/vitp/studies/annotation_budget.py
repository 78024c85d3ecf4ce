"""``vitp study annotation-budget``: the point classifier trained under equal annotation budgets
from different supervision sources (fine masks, coarse masks, boxes, clicks, mixtures).

Per (source, budget, seed) cell: the budget buys the first N training images at the source's cost
(``vitp.studies.supervision``, ``vitp.studies.costs``), then ``vitp fit`` of the config with
``data.init_args.max_train_samples N`` and the source's point sampler, then ``vitp validate`` of
its checkpoint. Everything else is the config's recipe (proposer, classifier, schedule);
``equal_steps`` trains every cell for the same number of optimizer steps instead of the config's
epochs (fewer images would otherwise also mean fewer steps). A budget
that buys no image is reported as such (nothing trained); one that buys every image trains on all of
them and reports the seconds actually spent.

Writes ``OUT/annotation_budget.csv`` (one row per cell), ``OUT/annotation_budget.md`` (mean ± std
over seeds, the cost table used), ``OUT/annotation_budget.png`` and ``OUT/commands.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitp.studies import config as cfg
from vitp.studies.costs import costs_markdown, load_costs
from vitp.studies.report import aggregate, markdown_table, plot_budget, write_csv
from vitp.studies.runner import Study, fit_args, validate_args
from vitp.studies.supervision import image_costs, images_within, parse_source, sampler_config

SHOWN = ("pq", "pq_th", "miou", "map", "point_acc")


@dataclass
class BudgetSettings:
    """The study's settings (see ``vitp study annotation-budget --help``)."""

    config: str
    out: Path
    sources: Sequence[str]
    budgets: Sequence[float]
    seeds: Sequence[int]
    costs: str | None
    coarse_margin: int
    extra: Sequence[str]
    equal_steps: int | None = None


def run(settings: BudgetSettings, argv: Sequence[str]) -> list[dict[str, Any]]:
    """Run (or resume) every cell; write the CSV, markdown and plot; return the rows."""
    study = Study(settings.out, "annotation-budget", argv)
    costs = load_costs(settings.costs)
    class_path, args = cfg.data_args(settings.config, settings.extra)
    limit = args.get("max_train_samples")
    images = cfg.training_images(cfg.training_json(class_path, args), int(limit) if limit is not None else None)
    points = cfg.num_points(args)
    sources = [parse_source(s) for s in settings.sources]
    cells = [(s, b, seed) for s in sources for b in settings.budgets for seed in settings.seeds]
    rows = []
    for source, budget, seed in tqdm(cells, desc="annotation-budget", unit="cell"):
        n, spent = images_within(budget, image_costs(source, images, costs))
        row: dict[str, Any] = {"source": source.name, "budget_s": budget, "seed": seed, "images": n,
                               "of_images": len(images), "spent_s": round(spent, 1), "hours": spent / 3600}
        if n == 0:
            row["note"] = "budget buys no image"
            rows.append(row)
            continue
        cell = f"{source.name.replace(':', '').replace('+', '_')}_b{budget:g}_s{seed}"
        cell_dir = study.cell_dir(cell).resolve()
        sampler = json.dumps(sampler_config(source, points, settings.coarse_margin))
        extra = [*settings.extra, "--data.init_args.max_train_samples", str(n),
                 "--data.init_args.point_sampler", sampler]
        steps = [] if settings.equal_steps is None else [
            "--trainer.max_epochs", "-1", "--trainer.max_steps", str(settings.equal_steps),
            "--trainer.limit_val_batches", "0"]
        fit = study.step(cell, 0, fit_args(settings.config, cell_dir, seed, [*extra, *steps]))
        row.update(study.step(cell, 1, validate_args(settings.config, fit["checkpoint"], extra, cell_dir)))
        row["train_seconds"] = fit.get("seconds")
        rows.append(row)
    write(settings.out, rows, costs_markdown(costs), settings)
    return rows


def write(out: Path, rows: list[dict[str, Any]], cost_table: str, settings: BudgetSettings) -> None:
    write_csv(out / "annotation_budget.csv", rows)
    trained = [r for r in rows if r.get("images")]
    entries = aggregate(trained, ("source", "budget_s"), ("hours", "images", *SHOWN))
    plotted = plot_budget(out / "annotation_budget.png", entries, ("pq", "pq_th", "miou", "map"))
    lines = [
        "# Annotation budget\n",
        f"Config `{settings.config}`; seeds {list(settings.seeds)}; metrics on the validation split "
        "(`vitp validate`), mean ± std over seeds. `hours`: annotation time the images used cost; "
        "`images`: training images bought by the budget.\n",
        markdown_table(entries, ("source", "budget_s", "hours", "images", *SHOWN),
                       ("source", "budget (s)", "hours", "images", *SHOWN)),
    ]
    empty = sorted({(r["source"], r["budget_s"]) for r in rows if not r.get("images")})
    if empty:
        lines.append("Budgets that buy no image (nothing trained): "
                     + ", ".join(f"{s} at {b:g} s" for s, b in empty) + "\n")
    if plotted:
        lines.append("![annotation budget](annotation_budget.png)\n")
    lines += ["## Cost table\n", cost_table, "\nCommands: [commands.md](commands.md); rows: "
              "[annotation_budget.csv](annotation_budget.csv).\n"]
    (out / "annotation_budget.md").write_text("\n".join(lines))
