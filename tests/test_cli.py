"""Every YAML in configs/ parses (`--print_config`), `--help` works, and the oracle `vitp test`
reaches PQ = mIoU = AP = 100 through the real COCO loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT

CONFIGS = sorted((PROJECT_ROOT / "configs").rglob("*.yaml"))


def run_vitp(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vitp.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd or PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_configs_exist():
    assert CONFIGS, "no YAML configs found"


def test_help_lists_subcommands():
    out = run_vitp("--help").stdout
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(PROJECT_ROOT / "configs")))
def test_config_prints_and_help(config: Path, tiny_coco_root: Path):
    printed = run_vitp("test", "--config", str(config), "--data.init_args.root", str(tiny_coco_root),
                       "--print_config").stdout
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["class_path"] and parsed["data"]["class_path"]
    assert str(tiny_coco_root) in printed
    model_help = run_vitp("fit", "--model.help", parsed["model"]["class_path"]).stdout
    assert "--model.proposer" in model_help and "--model.export_dir" in model_help
    assert "--data.root" in run_vitp("fit", "--data.help", parsed["data"]["class_path"]).stdout


def oracle_metrics(root: Path, tmp_path: Path) -> dict[str, float]:
    """`vitp test` of the oracle config on ``root``; the exported metrics.json."""
    export = tmp_path / "export"
    run_vitp(
        "test", "--config", "configs/coco/panoptic/oracle.yaml",
        "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
        "--model.init_args.export_dir", str(export),
    )
    return json.loads((export / "metrics.json").read_text())


def test_oracle_test_on_official_layout_is_perfect(tiny_coco_root: Path, tmp_path: Path):
    metrics = oracle_metrics(tiny_coco_root, tmp_path)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), (key, metrics)


def test_oracle_test_on_real_coco_sample(coco_sample_root: Path, tmp_path: Path):
    metrics = oracle_metrics(coco_sample_root, tmp_path)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), (key, metrics)
