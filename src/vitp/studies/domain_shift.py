"""``vitp study domain-shift``: train on one domain, evaluate on every domain.

Domains are generated styles (``default``, ``shapes``: written under ``OUT/data/<style>`` with the
config's ``synthetic_*`` sizes) or your own COCO-panoptic roots (``NAME=ROOT``). Per (train domain,
seed): optionally stage 1 (``--proposer_config``: the proposer trained on that domain, saved in the
cell, and read by stage 2), then ``vitp fit`` of the config on the domain, then ``vitp validate`` of
the checkpoint on each domain (with points: the classifier's point accuracy). Without
``--proposer_config`` every cell uses the config's proposer as it is: only the point classifier sees
the shift in training (say so when you report it).

Writes ``OUT/domain_shift.csv``, ``OUT/domain_shift.md`` (in-domain vs shifted, mean ± std over
seeds) and ``OUT/commands.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitp.studies import config as cfg
from vitp.studies.report import aggregate, markdown_table, write_csv
from vitp.studies.runner import Study, cell_callbacks, fit_args, validate_args

SHOWN = ("pq", "pq_th", "pq_st", "miou", "map", "point_acc", "point_acc_thing", "pq_oracle")


@dataclass
class ShiftSettings:
    """The study's settings (see ``vitp study domain-shift --help``)."""

    config: str
    out: Path
    domains: Sequence[str]
    seeds: Sequence[int]
    proposer_config: str | None
    extra: Sequence[str]


def domain_roots(settings: ShiftSettings) -> dict[str, Path]:
    """``name -> dataset root`` (generated styles are written when missing)."""
    from vitp.data.synthetic_scene import STYLES

    _, args = cfg.data_args(settings.config, settings.extra)
    roots = {}
    for spec in settings.domains:
        name, eq, root = spec.partition("=")
        if eq:
            roots[name] = Path(root).resolve()
        elif name in STYLES:
            roots[name] = cfg.generated_root(args, (settings.out / "data" / name).resolve(), name)
        else:
            raise ValueError(f"domain {spec!r}: a generated style ({', '.join(STYLES)}) or NAME=ROOT")
    return roots


def _saved_proposer(config: str, cell_dir: Path) -> Path:
    for cb in cell_callbacks(config, cell_dir):
        if str(cb.get("class_path", "")).endswith("SaveProposer"):
            return Path(cb["init_args"]["dirpath"])
    raise ValueError(f"{config}: --proposer_config needs a vitp.callbacks.SaveProposer callback (it saves the "
                     "proposer stage 2 reads)")


def run(settings: ShiftSettings, argv: Sequence[str]) -> list[dict[str, Any]]:
    """Run (or resume) every cell; write the CSV and markdown; return the rows."""
    study = Study(settings.out, "domain-shift", argv)
    roots = domain_roots(settings)
    rows = []
    cells = [(name, seed) for name in roots for seed in settings.seeds]
    for train, seed in tqdm(cells, desc="domain-shift", unit="cell"):
        cell = f"{train}_s{seed}"
        cell_dir = study.cell_dir(cell).resolve()
        proposer: list[str] = []
        step = 0
        if settings.proposer_config:
            stage1 = cell_dir / "proposer"
            study.step(cell, step, fit_args(settings.proposer_config, stage1, seed,
                                            [*settings.extra, "--data.init_args.root", str(roots[train])]))
            proposer = ["--model.init_args.proposer.init_args.model",
                        str(_saved_proposer(settings.proposer_config, stage1))]
            step += 1
        extra = [*settings.extra, "--data.init_args.root", str(roots[train]), *proposer]
        fit = study.step(cell, step, fit_args(settings.config, cell_dir, seed, extra))
        for test, root in roots.items():
            step += 1
            test_extra = [*settings.extra, "--data.init_args.root", str(root), *proposer]
            metrics = study.step(cell, step, validate_args(settings.config, fit["checkpoint"], test_extra, cell_dir))
            rows.append({"train": train, "test": test, "shift": "in-domain" if test == train else "shifted",
                         "seed": seed, **{k: v for k, v in metrics.items() if k != "seconds"}})
    write(settings, rows)
    return rows


def write(settings: ShiftSettings, rows: list[dict[str, Any]]) -> None:
    write_csv(settings.out / "domain_shift.csv", rows)
    entries = aggregate(rows, ("train", "test", "shift"), SHOWN)
    proposer = ("each training domain's own proposer (stage 1 per cell)" if settings.proposer_config
                else "the config's proposer in every cell (only the point classifier is retrained per domain)")
    text = [
        "# Domain shift\n",
        f"Config `{settings.config}`; proposer: {proposer}; seeds {list(settings.seeds)}; metrics on each "
        "domain's validation split (`vitp validate`), mean ± std over seeds.\n",
        markdown_table(entries, ("train", "test", "shift", *SHOWN)),
        "\nCommands: [commands.md](commands.md); rows: [domain_shift.csv](domain_shift.csv).\n",
    ]
    (settings.out / "domain_shift.md").write_text("\n".join(text))
