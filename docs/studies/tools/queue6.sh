#!/bin/bash
# issue-24 measurements, continued (meas24d, 2026-12-06): seed 2 of the annotation-budget grid, seed 1's
# missing 8 h cells, the shapes-trained domain-shift cells of seeds 1 and 2, then `coarse` at seed 0.
# One cell per invocation (launching stops at the time in /tmp/m24d/cutoff, HHMM UTC, or when
# /tmp/m24d/stop exists), one training job at a time, every command nice -n 10 with 1 thread.
# /tmp/wt24 -> /work/wt24 (a symlink), so every cell's argv (config path) is the earlier cells'.
# Waits for the seed-0 default run (/tmp/sa_s0, the proposer every budget cell reads) to finish first.
export PYTHONPATH=/tmp/wt24/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=/work/main/.venv/bin
CFG=/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml
OUT=/tmp/studies24d
L=/tmp/m24d
t() { echo "=== $(date -u +%T) $*"; }
late() { now=$(date -u +%H%M); cut=$(cat $L/cutoff); [ "$now" -ge "$cut" ] || [ -f $L/stop ]; }
cell() { src=$1; b=$2; s=$3
  if late; then t "skip $src $b s$s (cutoff)"; return; fi
  t "cell $src $b s$s"
  (cd /tmp/sa_s0 && nice -n 10 $V/vitp study annotation-budget --config $CFG --out $OUT/annotation_budget \
     --sources $src --budgets $b --seeds $s --equal_steps 304 -- --data.init_args.root /tmp/data_default) \
     > $L/cell_${src//[:+]/_}_b${b}_s$s.log 2>&1
  t "done rc=$?"
}
ds() { s=$1
  if late; then t "skip domain-shift shapes s$s (cutoff)"; return; fi
  t "domain-shift shapes s$s"
  (cd /tmp/sa_s0 && nice -n 10 $V/python /tmp/wt24/docs/studies/tools/ds_cells.py $OUT/domain_shift $s) > $L/ds_shapes_s$s.log 2>&1
  t "done rc=$?"
}
until grep -q '^real' /tmp/demo_s0.log 2>/dev/null; do sleep 60; done
t "seed-0 default run finished"
M=fine:0.1+box:0.9
for b in 7200 1800 28800; do for s in fine box clicks1 $M; do cell $s $b 2; done; done
cell clicks1 28800 1; cell $M 28800 1
ds 1; ds 2
for b in 7200 1800 28800; do cell coarse $b 0; done
t queue end
