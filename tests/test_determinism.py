"""Same seed, same machine: identical numbers (the default run's promise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT


@pytest.mark.slow
def test_demo_quick_same_seed_gives_identical_metrics(tmp_path: Path):
    metrics = []
    for run in ("a", "b"):
        workdir = tmp_path / run
        proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "demo.py"), "--quick", "--seed", "3",
                               "--workdir", str(workdir)], capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics.append(json.loads((workdir / "outputs/synthetic/demo_predictions/metrics.json").read_text()))
    assert metrics[0] == metrics[1]
    assert {"pq", "pq_proposer", "pq_oracle", "miou", "map"} <= set(metrics[0])  # test batches carry no points
