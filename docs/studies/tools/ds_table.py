"""domain_shift.md/.csv from the finished step files (the study was stopped before training every shapes
seed), merged with the rows of an earlier domain_shift.csv.

    python ds_table.py OUT DEST [--merge CSV]

OUT: the study's --out (cells/<train>_s<seed>/step{2,3}.json: validation on default, shapes); DEST:
where the tables go; --merge CSV: per-seed rows kept from an earlier run (e.g. the committed CSV, whose
output directory is gone); a (train, test, seed) found in OUT replaces the CSV's row. Mean ± std
(sample std) over the seeds each (train, test) pair has; the `seeds` column lists them."""
import argparse
import csv
import json
from pathlib import Path
from vitp.studies.domain_shift import SHOWN
from vitp.studies.report import aggregate, markdown_table, write_csv

p = argparse.ArgumentParser()
p.add_argument("out", type=Path)
p.add_argument("dest", type=Path)
p.add_argument("--merge", type=Path)
a = p.parse_args()
a.dest.mkdir(parents=True, exist_ok=True)
DOMS = ["default", "shapes"]
TEXT = ("train", "test", "shift")

rows = {}
if a.merge:
    with a.merge.open() as f:
        for r in csv.DictReader(f):
            r = {k: (v if k in TEXT else int(v) if k == "seed" else float(v)) for k, v in r.items()}
            rows[(r["train"], r["test"], r["seed"])] = r
new = []
cells = sorted((a.out / "cells").iterdir()) if (a.out / "cells").is_dir() else []
for cell in cells:
    train, seed = cell.name.rsplit("_s", 1)
    for i, test in enumerate(DOMS):
        path = cell / f"step{2 + i}.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())["result"]
        key = (train, test, int(seed))
        rows[key] = {"train": train, "test": test, "shift": "in-domain" if test == train else "shifted",
                     "seed": int(seed), **{k: v for k, v in m.items() if k != "seconds"}}
        new.append(key)
order = sorted(rows, key=lambda k: (DOMS.index(k[0]), k[2], DOMS.index(k[1])))
rows = [rows[k] for k in order]
write_csv(a.dest / "domain_shift.csv", rows)
entries = aggregate(sorted(rows, key=lambda r: (DOMS.index(r["train"]), DOMS.index(r["test"]))),
                    ("train", "test", "shift"), SHOWN)
for e in entries:
    e["seeds"] = ", ".join(str(r["seed"]) for r in rows if (r["train"], r["test"]) == (e["train"], e["test"]))
md = markdown_table(entries, ("train", "test", "shift", "seeds", *SHOWN))
per_seed = markdown_table(rows, ("train", "test", "seed", *SHOWN))
text = ["# Domain shift\n",
        "Config `configs/synthetic/vitp/tiny_mask2former.yaml`; proposer: each training domain's own proposer "
        "(stage 1 per cell, `--proposer_config configs/synthetic/proposer/mask2former_small.yaml`); metrics on "
        "each domain's validation split (`vitp validate`), mean ± std over the seeds listed (sample std, n - 1; "
        "one seed: no ±). The `default` cells are the default run's own trainings (`scripts/demo.py --seed S`, "
        "the same commands), the `shapes` cells were trained by the study's commands (see "
        "[commands.md](commands.md)). Table built from the cells' step files (the study was run in parts).\n",
        md, "\n## Every seed\n", per_seed,
        "\nCommands: [commands.md](commands.md); rows: [domain_shift.csv](domain_shift.csv).\n"]
(a.dest / "domain_shift.md").write_text("\n".join(text))
print(md)
print(per_seed)
print("new rows:", new or "none")
