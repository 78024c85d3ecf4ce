#!/bin/bash
export PYTHONPATH=/tmp/wt24/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=/work/main/.venv/bin
CFG=/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml
t() { echo "=== $(date -u +%T) $*"; }
while kill -0 $(cat /tmp/m24logs/queue3.pid) 2>/dev/null; do sleep 10; done
t budget2
(cd /tmp/sa_s0 && nice -n 10 $V/vitp study annotation-budget --config $CFG --out /tmp/studies24/annotation_budget --sources fine box clicks1 fine:0.1+box:0.9 --budgets 1800 7200 --seeds 0 --equal_steps 304 -- --data.init_args.root /tmp/data_default) > /tmp/m24logs/budget2.log 2>&1; t done rc=$?
