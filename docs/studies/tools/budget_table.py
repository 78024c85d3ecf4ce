"""annotation_budget.{csv,md,png} from the finished cells (the last run may be stopped mid-grid), plus the
default run's seed-0 checkpoint as the `fine` source with all 300 images (32.4 h) as a reference point."""
import json, sys
from pathlib import Path
from vitp.studies import config as cfg
from vitp.studies.costs import costs_markdown, load_costs
from vitp.studies.supervision import image_costs, images_within, parse_source
from vitp.studies.report import aggregate, markdown_table, plot_budget, write_csv
from vitp.studies.annotation_budget import SHOWN
OUT = Path(sys.argv[1]); DEST = Path(sys.argv[2]); DEST.mkdir(parents=True, exist_ok=True)
costs = load_costs(None)
images = cfg.training_images(Path("/tmp/data_default/annotations/panoptic_train2017.json"))
rows = []
for src in ["fine", "box", "clicks1", "fine:0.1+box:0.9"]:
    source = parse_source(src)
    for budget in [1800.0, 7200.0, 28800.0]:
        cell = OUT / "cells" / f"{source.name.replace(':', '').replace('+', '_')}_b{budget:g}_s0"
        if not (cell / "step1.json").is_file():
            continue
        n, spent = images_within(budget, image_costs(source, images, costs))
        r = json.loads((cell / "step1.json").read_text())["result"]
        fit = json.loads((cell / "step0.json").read_text())["result"]
        rows.append({"source": source.name, "budget_s": budget, "seed": 0, "images": n, "of_images": len(images),
                     "spent_s": round(spent, 1), "hours": spent / 3600, **{k: v for k, v in r.items() if k != "seconds"},
                     "train_seconds": fit.get("seconds")})
# reference: the default run (fine masks, all 300 images, the same 304 steps), seed 0, vitp validate with points
ref = json.loads(Path("/tmp/studies24/domain_shift/cells/default_s0/step2.json").read_text())["result"]
n, spent = images_within(1e9, image_costs(parse_source("fine"), images, costs))
rows.append({"source": "fine (all images: the default run)", "budget_s": round(spent), "seed": 0, "images": n,
             "of_images": len(images), "spent_s": round(spent, 1), "hours": spent / 3600,
             **{k: v for k, v in ref.items() if k != "seconds"}})
write_csv(DEST / "annotation_budget.csv", rows)
entries = aggregate(rows, ("source", "budget_s"), ("hours", "images", *SHOWN))
plot_budget(DEST / "annotation_budget.png", entries, ("pq", "pq_th", "miou", "map"))
md = markdown_table(entries, ("source", "budget_s", "hours", "images", *SHOWN),
                    ("source", "budget (s)", "hours", "images", *SHOWN))
(DEST / "annotation_budget.md").write_text("# Annotation budget (seed 0)\n\n" + md + "\n\n## Cost table\n\n" + costs_markdown(costs) + "\n")
print(md)
