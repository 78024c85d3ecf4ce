"""Tabulate default-run results over several runs (seeds, datasets): per run and mean +- std.

Each argument is a `scripts/demo.py --workdir` directory. Reads its test metrics
(`outputs/synthetic/demo_predictions/metrics.json`) and the last validation point accuracies of
the ViT-P stage (CSV log), and prints markdown tables: the three variants per run, ViT-P minus
proposer, and the share of the proposer -> oracle-classes PQ gap that ViT-P closes.

    python scripts/seeds_table.py /tmp/runs/s0 /tmp/runs/s1 /tmp/runs/s2
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

METRICS = "outputs/synthetic/demo_predictions/metrics.json"
VITP_LOGS = "outputs/synthetic/vitp_*/lightning_logs"  # the ViT-P stage of either demo recipe
KEYS = [("PQ", "pq"), ("PQ_th", "pq_th"), ("PQ_st", "pq_st"), ("RQ", "rq"), ("mIoU", "miou"), ("AP", "map")]
VARIANTS = [("proposer alone", "_proposer"), ("proposer + ViT-P", ""), ("oracle classes", "_oracle")]


def point_accuracy(run: Path) -> dict[str, float]:
    """The last logged validation point accuracies (micro, thing and stuff classes)."""
    last: dict[str, float] = {}
    for log in sorted(run.glob(f"{VITP_LOGS}/version_*/metrics.csv")):
        with open(log) as f:
            for row in csv.DictReader(f):
                for key in ("val/point_acc", "val/point_acc_thing", "val/point_acc_stuff"):
                    if row.get(key):
                        last[key.split("/")[1]] = float(row[key])
    return last


def mean_std(values: list[float], digits: int = 1) -> str:
    """``mean ± std`` (the sample standard deviation), or the one value alone."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    results = {run: json.loads((run / METRICS).read_text()) for run in args.runs}
    header = "| run | variant | " + " | ".join(name for name, _ in KEYS) + " |"
    print(header + "\n|---|---|" + "---:|" * len(KEYS))
    for run, m in results.items():
        for name, suffix in VARIANTS:
            print(f"| {run.name} | {name} | " + " | ".join(f"{m[key + suffix]:.1f}" for _, key in KEYS) + " |")
    print(f"\n| variant (mean ± std over {len(results)}) | " + " | ".join(name for name, _ in KEYS) + " |")
    print("|---|" + "---:|" * len(KEYS))
    for name, suffix in VARIANTS:
        print(f"| {name} | " + " | ".join(mean_std([m[key + suffix] for m in results.values()]) for _, key in KEYS)
              + " |")
    print("\n| | " + " | ".join(name for name, _ in KEYS) + " | gap closed (PQ) | point acc (thing / stuff) |")
    print("|---|" + "---:|" * (len(KEYS) + 2))
    gains: dict[str, list[float]] = {key: [] for _, key in KEYS}
    closed = []
    for run, m in results.items():
        for _, key in KEYS:
            gains[key].append(m[key] - m[key + "_proposer"])
        gap = m["pq_oracle"] - m["pq_proposer"]
        closed.append(100.0 * (m["pq"] - m["pq_proposer"]) / gap if gap > 0 else float("nan"))
        acc = point_accuracy(run)
        print(f"| {run.name}: ViT-P − proposer | " + " | ".join(f"{gains[k][-1]:+.1f}" for _, k in KEYS)
              + f" | {closed[-1]:.0f} % | {acc.get('point_acc_thing', float('nan')):.1f} / "
              f"{acc.get('point_acc_stuff', float('nan')):.1f} |")
    print(f"| mean ± std over {len(results)} | " + " | ".join(mean_std(gains[k]) for _, k in KEYS)
          + f" | {mean_std(closed)} % | |")
    print("\nGoals per run (issue 22): oracle-classes PQ_th >= 30; ViT-P PQ_th >= 2/3 of it; gap closed >= 60 %; "
          "ViT-P AP > proposer AP")
    for (run, m), gap in zip(results.items(), closed):
        checks = [m["pq_th_oracle"] >= 30, m["pq_th"] >= 2 / 3 * m["pq_th_oracle"], gap >= 60, m["map"] > m["map_proposer"]]
        print(f"- {run.name}: " + ", ".join("yes" if c else "no" for c in checks))


if __name__ == "__main__":
    main()
