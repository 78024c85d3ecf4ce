#!/usr/bin/env bash
# `vitp fit` on several nodes x GPUs launched by torchrun (no SLURM); run it once on every node:
#
#   NNODES=2 GPUS_PER_NODE=4 MASTER_ADDR=node0 scripts/torchrun_fit.sh CONFIG [more `vitp fit` arguments]
#
# The c10d rendezvous at MASTER_ADDR:MASTER_PORT (default port 29500) assigns the node ranks;
# RUN_ID (default vitp) must be the same on all nodes. Lightning reads torchrun's variables
# (its TorchElasticEnvironment) and checks devices x num_nodes against the world size.
# Single machine: scripts/torchrun_fit.sh CONFIG (NNODES=1, all visible GPUs).
# STRATEGY=ddp_find_unused_parameters_true when a trained proposer leaves parameters unused;
# CKPT=path/to/last.ckpt resumes a run. Under SLURM, scripts/slurm/vitp_fit.sbatch is the simpler
# route (srun starts the processes, Lightning reads SLURM's ranks and requeues).
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: [NNODES=N GPUS_PER_NODE=G MASTER_ADDR=HOST] $0 CONFIG [vitp fit arguments]" >&2
    exit 2
fi
CONFIG=$1
shift
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [[ "$GPUS_PER_NODE" -lt 1 ]]; then
    echo "no GPU found: set GPUS_PER_NODE" >&2
    exit 2
fi
RESUME=()
if [[ -n "${CKPT:-}" ]]; then
    RESUME=(--ckpt_path "$CKPT")
fi
# Lightning prefers its SLURM environment whenever SLURM task variables are set; the job name
# "interactive" is Lightning's documented way to make it use torchrun's instead.
if [[ -n "${SLURM_NTASKS:-}" ]]; then
    export SLURM_JOB_NAME=interactive
fi

torchrun \
    --nnodes "$NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${MASTER_ADDR:-localhost}:${MASTER_PORT:-29500}" \
    --rdzv-id "${RUN_ID:-vitp}" \
    -m vitp.cli fit --config "$CONFIG" \
    --trainer.accelerator gpu \
    --trainer.num_nodes "$NNODES" \
    --trainer.devices "$GPUS_PER_NODE" \
    --trainer.strategy "${STRATEGY:-ddp}" \
    "${RESUME[@]}" "$@"
