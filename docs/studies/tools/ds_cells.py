"""Train and validate only the `shapes`-trained cells of the domain-shift study, for the seeds given.

    python ds_cells.py OUT SEED [SEED ...]     # from /tmp/sa_s0, as the study was run

Each cell runs exactly the steps (and argv) that

    vitp study domain-shift --config /tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml \
        --proposer_config /tmp/wt24/configs/synthetic/proposer/mask2former_small.yaml --out OUT \
        --domains default=/tmp/data_default shapes=/tmp/data_shapes --seeds SEED

runs for its `shapes_sSEED` cell (stage 1 on shapes, stage 2 on shapes, validate on default then on
shapes: step0..step3), through the study's own Study / fit_args / validate_args, without the
`default_sSEED` cells: those are the default run's own trainings, measured earlier (committed rows of
docs/studies/domain_shift/domain_shift.csv) and not retrained here."""
import sys
from pathlib import Path

from vitp.studies.domain_shift import ShiftSettings, _saved_proposer, domain_roots
from vitp.studies.runner import Study, fit_args, validate_args

CFG = "/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml"
PCFG = "/tmp/wt24/configs/synthetic/proposer/mask2former_small.yaml"
DOMAINS = ["default=/tmp/data_default", "shapes=/tmp/data_shapes"]
TRAIN = "shapes"

out = Path(sys.argv[1])
seeds = [int(s) for s in sys.argv[2:]]
settings = ShiftSettings(CFG, out, DOMAINS, seeds, PCFG, [])
argv = ["--config", CFG, "--proposer_config", PCFG, "--out", str(out), "--domains", *DOMAINS,
        "--seeds", *map(str, seeds)]
study = Study(out, "domain-shift", argv)
study.log(f"> run by docs/studies/tools/ds_cells.py: only the `{TRAIN}` cells of this command (the default cells "
          "are the default run's trainings, measured earlier)\n")
roots = domain_roots(settings)
for seed in seeds:
    cell = f"{TRAIN}_s{seed}"
    cell_dir = study.cell_dir(cell).resolve()
    stage1 = cell_dir / "proposer"
    study.step(cell, 0, fit_args(PCFG, stage1, seed, ["--data.init_args.root", str(roots[TRAIN])]))
    proposer = ["--model.init_args.proposer.init_args.model", str(_saved_proposer(PCFG, stage1))]
    fit = study.step(cell, 1, fit_args(CFG, cell_dir, seed, ["--data.init_args.root", str(roots[TRAIN]), *proposer]))
    for step, (test, root) in enumerate(roots.items(), start=2):
        m = study.step(cell, step, validate_args(CFG, fit["checkpoint"], ["--data.init_args.root", str(root), *proposer],
                                                 cell_dir))
        print(cell, "->", test, {k: round(v, 1) for k, v in m.items() if k in ("pq", "miou", "point_acc")}, flush=True)
