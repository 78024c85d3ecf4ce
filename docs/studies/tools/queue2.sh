#!/bin/bash
export PYTHONPATH=/tmp/wt24/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=/work/main/.venv/bin
CFG=/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml
ck() { echo /tmp/sa_s$1/outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt; }
pa() { out=$1; root=$2; shift 2
  (cd /tmp/sa_s0 && nice -n 10 $V/vitp study point-assignment --config $CFG --out /tmp/studies24/$out --ckpt_path "$@" -- --data.init_args.root $root --data.init_args.num_workers 0)
}
t() { echo "=== $(date -u +%T) $*"; }
for s in 1 2; do
  t demo s$s; (cd /tmp/wt24 && nice -n 10 $V/python scripts/demo.py --seed $s --workdir /tmp/sa_s$s --data-root /tmp/data_default) > /tmp/m24logs/demo_s$s.log 2>&1; t done rc=$?
done
t pa_default all; pa pa_default /tmp/data_default $(ck 0) $(ck 1) $(ck 2) > /tmp/m24logs/pa_default.log 2>&1; t done rc=$?
t pa_shapes all; pa pa_shapes /tmp/data_shapes $(ck 0) $(ck 1) $(ck 2) > /tmp/m24logs/pa_shapes.log 2>&1; t done rc=$?
