"""domain_shift.md/.csv from the finished step files (the study was stopped before training every shapes seed)."""
import json, sys
from pathlib import Path
from vitp.studies.domain_shift import ShiftSettings, write
OUT = Path("/tmp/studies24/domain_shift")
rows = []
doms = ["default", "shapes"]
for cell in sorted((OUT / "cells").iterdir()):
    train, seed = cell.name.rsplit("_s", 1)
    for i, test in enumerate(doms):
        p = cell / f"step{2 + i}.json"
        if not p.is_file():
            continue
        m = json.loads(p.read_text())["result"]
        rows.append({"train": train, "test": test, "shift": "in-domain" if test == train else "shifted",
                     "seed": int(seed), **{k: v for k, v in m.items() if k != "seconds"}})
seeds = sorted({r["seed"] for r in rows})
write(ShiftSettings("configs/synthetic/vitp/tiny_mask2former.yaml", OUT, ["default", "shapes"], seeds,
                    "configs/synthetic/proposer/mask2former_small.yaml", []), rows)
for r in rows: print(r["train"], r["test"], r["seed"], round(r["pq"], 1))
