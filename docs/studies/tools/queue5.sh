#!/bin/bash
# issue-24 annotation budget, continued (meas24c): one cell per invocation, so launching can stop at a set time.
# /tmp/wt24 -> /work/wt24 (a symlink), so the config path in every cell's argv is the earlier cells' and those are skipped.
export PYTHONPATH=/tmp/wt24/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=/work/main/.venv/bin
CFG=/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml
t() { echo "=== $(date -u +%T) $*"; }
cell() { src=$1; b=$2; s=$3
  now=$(date -u +%H%M); cut=$(cat /tmp/m24c/cutoff)
  if [ "$now" -ge "$cut" ] || [ -f /tmp/m24c/stop ]; then t "skip $src $b s$s (cutoff $cut)"; return; fi
  t "cell $src $b s$s"
  (cd /tmp/sa_s0 && nice -n 10 $V/vitp study annotation-budget --config $CFG --out /tmp/studies24/annotation_budget --sources $src --budgets $b --seeds $s --equal_steps 304 -- --data.init_args.root /tmp/data_default) > /tmp/m24c/cell_${src//[:+]/_}_b${b}_s$s.log 2>&1
  t "done rc=$?"
}
M=fine:0.1+box:0.9
cell clicks1 1800 0; cell $M 1800 0
cell fine 28800 0; cell box 28800 0; cell $M 28800 0; cell clicks1 28800 0
for s in fine box clicks1 $M; do cell $s 7200 1; done
for s in fine box clicks1 $M; do cell $s 1800 1; done
for s in fine box $M clicks1; do cell $s 28800 1; done
t queue end
