"""``vitp study annotation-budget|point-assignment|domain-shift``: the command line of the studies.

Arguments after ``--`` are passed to every ``vitp`` command the study runs (e.g. ``--
--data.init_args.root DIR --trainer.max_epochs 8``), after the study's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

STUDIES = ("annotation-budget", "point-assignment", "domain-shift")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vitp study", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="study", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--config", required=True, help="the run's config (a ViT-P stage-2 YAML, as for vitp fit)")
        p.add_argument("--out", type=Path, default=Path(out), help=f"output directory (default {out})")

    budget = sub.add_parser("annotation-budget", help="accuracy against annotation time per supervision source")
    common(budget, "outputs/studies/annotation_budget")
    budget.add_argument("--sources", nargs="+", default=["fine", "coarse", "box", "clicks1", "fine:0.1+box:0.9"],
                        help="fine, coarse, box, clicksK, or mixtures such as fine:0.1+box:0.9")
    budget.add_argument("--budgets", nargs="+", type=float, default=[1800.0, 7200.0, 28800.0],
                        help="annotation budgets in seconds (default 0.5 h, 2 h, 8 h)")
    budget.add_argument("--equal_steps", type=int, default=None,
                        help="train every cell for this many optimizer steps (no validation during fit), so "
                             "fewer images do not also mean less training; default: the config's epochs")
    budget.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    budget.add_argument("--costs", default=None, help="YAML/JSON overriding the cost table (vitp.studies.costs)")
    budget.add_argument("--coarse_margin", type=int, default=3, help="pixels each segment is eroded by (coarse)")

    point = sub.add_parser("point-assignment", help="inference point rules on the same proposals (no training)")
    common(point, "outputs/studies/point_assignment")
    point.add_argument("--ckpt_path", nargs="+", required=True, help="trained checkpoint(s), e.g. one per seed")
    point.add_argument("--rules", nargs="+", default=["argmax", "interior", "centroid", "top3", "random"],
                       help="argmax, interior, centroid, random, topK (argmax, K points averaged), RULE@K")
    point.add_argument("--seed", type=int, default=0, help="seed of the random rule")

    shift = sub.add_parser("domain-shift", help="train on one domain, evaluate on every domain")
    common(shift, "outputs/studies/domain_shift")
    shift.add_argument("--domains", nargs="+", default=["default", "shapes"],
                       help="generated styles (default, shapes) or NAME=ROOT of a COCO-panoptic tree")
    shift.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    shift.add_argument("--proposer_config", default=None,
                       help="stage-1 config: train the proposer on each training domain too (needs SaveProposer)")
    return top


def main(argv: Sequence[str]) -> int:
    """Run one study; 0 on success."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    recorded = [*argv[1:], *(["--", *extra] if extra else [])]
    if args.study == "annotation-budget":
        from vitp.studies.annotation_budget import BudgetSettings, run

        run(BudgetSettings(args.config, args.out, args.sources, args.budgets, args.seeds, args.costs,
                           args.coarse_margin, extra, args.equal_steps), recorded)
        report = args.out / "annotation_budget.md"
    elif args.study == "point-assignment":
        from vitp.studies.point_assignment import PointSettings, run as run_points

        run_points(PointSettings(args.config, args.out, args.ckpt_path, args.rules, args.seed, extra), recorded)
        report = args.out / "point_assignment.md"
    else:
        from vitp.studies.domain_shift import ShiftSettings, run as run_shift

        run_shift(ShiftSettings(args.config, args.out, args.domains, args.seeds, args.proposer_config, extra),
                  recorded)
        report = args.out / "domain_shift.md"
    print(f"vitp study {args.study}: results in {report.resolve()} (commands: {(args.out / 'commands.md').resolve()})")
    return 0
