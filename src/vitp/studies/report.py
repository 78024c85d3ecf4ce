"""Study results as files: one CSV row per cell, a markdown table (mean ± std over seeds), a plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All rows, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(rows: Sequence[dict[str, Any]], group: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Rows grouped by the ``group`` columns, each metric as ``(mean, std, n)`` over the group's rows
    that have it (e.g. over seeds); groups in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(g) for g in group), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(group, key))
        entry["n"] = len(members)
        for metric in metrics:
            values = [float(m[metric]) for m in members if m.get(metric) not in (None, "")]
            entry[metric] = (*_stats(values), len(values)) if values else None
        out.append(entry)
    return out


def fmt(value: Any) -> str:
    """A cell of a markdown table: ``mean ± std`` for aggregated metrics, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std, n = value
        return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown_table(entries: Sequence[dict[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(e.get(c)) for c in columns) + " |" for e in entries]
    return "\n".join(lines) + "\n"


def plot_budget(path: Path, entries: Sequence[dict[str, Any]], metrics: Sequence[str]) -> bool:
    """Metrics against annotation hours, one line per source (mean ± std over seeds). False (and
    nothing written) when matplotlib is not installed or nothing was trained."""
    if not entries:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    sources = list(dict.fromkeys(e["source"] for e in entries))
    for ax, metric in zip(axes[0], metrics):
        for source in sources:
            points = sorted((e["hours"][0], e[metric]) for e in entries
                            if e["source"] == source and e.get(metric) is not None and e.get("hours") is not None)
            if not points:
                continue
            xs = [p[0] for p in points]
            ax.errorbar(xs, [p[1][0] for p in points], yerr=[p[1][1] for p in points], marker="o",
                        capsize=3, label=source)
        ax.set_xscale("log")
        ax.set_xlabel("annotation hours (spent)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
