"""annotation_budget.{csv,md,png} from the finished cells (the runs may be stopped mid-grid, and cells
may have different numbers of seeds), plus the default run's seed-0 checkpoint as the `fine` source
with all 300 images (32.4 h) as a reference point.

    python budget_table.py OUT DEST [--merge CSV] [--ref STEP_JSON]

OUT: a study's --out (its cells/<source>_b<budget>_s<seed>/step{0,1}.json are read); DEST: where the
tables go. --merge CSV: also take the per-seed rows of an earlier annotation_budget.csv (e.g. the
committed one, whose output directory is gone); a (source, budget, seed) found in OUT replaces the
CSV's row. The reference row is the CSV's (--merge) unless --ref names the `vitp validate` step file
of the default run (the domain-shift study's default_s0/step2.json).

The main table is mean ± std over the seeds a cell has (sample std, n - 1; a single seed shows no
±), a second table lists every seed."""
import argparse
import csv
import json
from pathlib import Path
from vitp.studies import config as cfg
from vitp.studies.costs import costs_markdown, load_costs
from vitp.studies.supervision import image_costs, images_within, parse_source
from vitp.studies.report import aggregate, markdown_table, plot_budget, write_csv
from vitp.studies.annotation_budget import SHOWN

p = argparse.ArgumentParser()
p.add_argument("out", type=Path)
p.add_argument("dest", type=Path)
p.add_argument("--merge", type=Path, help="an earlier annotation_budget.csv whose rows are kept")
p.add_argument("--ref", type=Path, help="step file of the default run's vitp validate (reference row)")
a = p.parse_args()
OUT, DEST = a.out, a.dest
DEST.mkdir(parents=True, exist_ok=True)
SOURCES = ["fine", "box", "clicks1", "fine:0.1+box:0.9", "coarse"]
BUDGETS = [1800.0, 7200.0, 28800.0]
SEEDS = [0, 1, 2]
REF = "fine (all images: the default run)"
costs = load_costs(None)
images = cfg.training_images(Path("/tmp/data_default/annotations/panoptic_train2017.json"))


def number(v: str):
    """A CSV cell back as int / float ('' stays None: a column the row did not have)."""
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


old, ref_row = {}, None
if a.merge:
    with a.merge.open() as f:
        for r in csv.DictReader(f):
            r = {k: number(v) if k != "source" else v for k, v in r.items()}
            if r["source"] == REF:
                ref_row = r
            else:
                old[(r["source"], int(r["budget_s"]), int(r["seed"]))] = r

rows, missing, new = [], [], []
coarse_run = any((OUT / "cells").glob("coarse_b*_s*/step1.json"))
for src in SOURCES:
    source = parse_source(src)
    for budget in BUDGETS:
        n, spent = images_within(budget, image_costs(source, images, costs))
        for seed in SEEDS:
            cell = OUT / "cells" / f"{source.name.replace(':', '').replace('+', '_')}_b{budget:g}_s{seed}"
            key = (source.name, int(budget), seed)
            if (cell / "step1.json").is_file():
                r = json.loads((cell / "step1.json").read_text())["result"]
                fit = json.loads((cell / "step0.json").read_text())["result"]
                rows.append({"source": source.name, "budget_s": int(budget), "seed": seed, "images": n,
                             "of_images": len(images), "spent_s": round(spent, 1), "hours": spent / 3600,
                             **{k: v for k, v in r.items() if k != "seconds"}, "train_seconds": fit.get("seconds")})
                new.append(key)
            elif key in old:
                assert (old[key]["images"], old[key]["spent_s"]) == (n, round(spent, 1)), (key, old[key])
                rows.append(old[key])
            elif src != "coarse" or coarse_run:
                missing.append(key)
if a.ref:
    ref = json.loads(a.ref.read_text())["result"]
    n, spent = images_within(1e9, image_costs(parse_source("fine"), images, costs))
    ref_row = {"source": REF, "budget_s": round(spent), "seed": 0, "images": n, "of_images": len(images),
               "spent_s": round(spent, 1), "hours": spent / 3600, **{k: v for k, v in ref.items() if k != "seconds"}}
rows.append(ref_row)
write_csv(DEST / "annotation_budget.csv", rows)
entries = aggregate(rows, ("source", "budget_s"), ("hours", "images", *SHOWN))
for e in entries:
    e["seeds"] = ", ".join(str(r["seed"]) for r in rows if (r["source"], r["budget_s"]) == (e["source"], e["budget_s"]))
    e["hours"] = e["hours"][0]
    e["images"] = int(e["images"][0])
plot_budget(DEST / "annotation_budget.png",
            [{**e, "hours": (e["hours"], 0.0, 1)} for e in entries if e["source"] != REF], ("pq", "pq_th", "miou", "map"))
md = markdown_table(entries, ("source", "budget_s", "hours", "images", "seeds", *SHOWN),
                    ("source", "budget (s)", "hours", "images", "seeds", *SHOWN))
per_seed = markdown_table(rows, ("source", "budget_s", "seed", "images", *SHOWN, "train_seconds"),
                          ("source", "budget (s)", "seed", "images", *SHOWN, "fit (s)"))
text = ["# Annotation budget\n",
        "Config `configs/synthetic/vitp/tiny_mask2former.yaml` (the default recipe), 304 optimizer steps per cell "
        "(`--equal_steps 304`), every cell with the same stage-1 proposer (the default run's seed 0); `seeds`: the "
        "stage-2 training seeds a cell has. Metrics on the validation split (`vitp validate`); with two or more "
        "seeds mean ± std (sample std, n - 1), a single seed has no ±. `hours`: annotation time the images used "
        "cost; `images`: training images bought by the budget (of 300). Last row: the default run (fine masks on "
        "all images, seed 0), the reference. `fit (s)`: the cell's training time on a shared, loaded 2-core "
        "machine (no speed measurement).\n", md, "\n## Every seed\n", per_seed,
        "\n![annotation budget: PQ, PQ_th, mIoU, AP against annotation hours](annotation_budget.png)\n"]
if missing:
    text.append("\nNot run (source, budget s, seed): " + ", ".join(f"{s} {b:g} s{d}" for s, b, d in missing) + "\n")
text += ["\n## Cost table\n", costs_markdown(costs),
         "\nThe `click` figure (2.4 s) has since been checked against the authors' code (it is their "
         "`timePerClick`, one click per class present there, per segment here): see docs/studies.md. The source "
         "texts above are the code's (`vitp.studies.costs`), as the cells used them.\n",
         "\nCommands: [commands.md](commands.md); rows: [annotation_budget.csv](annotation_budget.csv).\n"]
(DEST / "annotation_budget.md").write_text("\n".join(text))
print(md); print(per_seed)
print("new cells:", ", ".join(f"{s} {b} s{d}" for s, b, d in new) or "none")
