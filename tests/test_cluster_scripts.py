"""The multi-node launch scripts are valid bash and launch `vitp fit` the way Lightning expects."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import PROJECT_ROOT

SBATCH = PROJECT_ROOT / "scripts" / "slurm" / "vitp_fit.sbatch"
TORCHRUN = PROJECT_ROOT / "scripts" / "torchrun_fit.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("script", [SBATCH, TORCHRUN], ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sbatch_asks_for_the_requeue_signal_and_one_task_per_gpu():
    text = SBATCH.read_text()
    directives = dict(line[len("#SBATCH --"):].partition("=")[::2]
                      for line in text.splitlines() if line.startswith("#SBATCH --"))
    assert "requeue" in directives
    assert directives["signal"] == "SIGUSR1@90" and "requeue_signal: SIGUSR1" in (
        PROJECT_ROOT / "configs" / "cluster" / "slurm.yaml").read_text()
    assert directives["gres"] == f"gpu:{directives['ntasks-per-node']}"
    for arg in ("srun vitp fit", "--config configs/cluster/slurm.yaml", '--trainer.num_nodes "$SLURM_NNODES"',
                '--trainer.devices "$SLURM_NTASKS_PER_NODE"'):
        assert arg in text, arg
    assert "torchrun" in TORCHRUN.read_text() and "-m vitp.cli fit" in TORCHRUN.read_text()
