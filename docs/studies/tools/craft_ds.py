"""Install task-1's default-domain trainings (scripts/demo.py --seed S, same configs, seed and data) as the
finished fit steps of the domain-shift study's default_sS cells, so the study only validates them."""
import json, shutil, sys
from pathlib import Path
from vitp.studies.runner import fit_args
from vitp.studies.domain_shift import _saved_proposer

CFG = "/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml"
PCFG = "/tmp/wt24/configs/synthetic/proposer/mask2former_small.yaml"
OUT = Path("/tmp/studies24/domain_shift")
ROOT = "/tmp/data_default"
extra = []
for seed in map(int, sys.argv[1:]):
    src = Path(f"/tmp/sa_s{seed}/outputs/synthetic")
    cell_dir = (OUT / "cells" / f"default_s{seed}").resolve()
    stage1 = cell_dir / "proposer"
    argv0 = fit_args(PCFG, stage1, seed, [*extra, "--data.init_args.root", ROOT])
    hf = _saved_proposer(PCFG, stage1)
    proposer = ["--model.init_args.proposer.init_args.model", str(hf)]
    argv1 = fit_args(CFG, cell_dir, seed, [*extra, "--data.init_args.root", ROOT, *proposer])
    shutil.copytree(src / "proposer_mask2former" / "hf_model", hf, dirs_exist_ok=True)
    (cell_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt = cell_dir / "checkpoints" / "last.ckpt"
    shutil.copy2(src / "vitp_tiny_mask2former" / "checkpoints" / "last.ckpt", ckpt)
    note = (f"not run by the study: trained by `python scripts/demo.py --seed {seed} --data-root {ROOT}` "
            f"(same configs, seed and data; copied from {src})")
    (cell_dir / "step0.json").write_text(json.dumps({"argv": argv0, "result": {}, "note": note}, indent=1))
    (cell_dir / "step1.json").write_text(json.dumps({"argv": argv1, "result": {"checkpoint": str(ckpt)}, "note": note}, indent=1))
    print("installed", cell_dir)
