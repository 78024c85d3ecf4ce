#!/bin/bash
export PYTHONPATH=/tmp/wt24/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V=/work/main/.venv/bin
CFG=/tmp/wt24/configs/synthetic/vitp/tiny_mask2former.yaml
PCFG=/tmp/wt24/configs/synthetic/proposer/mask2former_small.yaml
t() { echo "=== $(date -u +%T) $*"; }
while kill -0 $(cat /tmp/m24logs/queue2.pid) 2>/dev/null; do sleep 10; done
t craft; $V/python /tmp/m24logs/craft_ds.py 0 1 2; t done rc=$?
DS="study domain-shift --config $CFG --proposer_config $PCFG --out /tmp/studies24/domain_shift --domains default=/tmp/data_default shapes=/tmp/data_shapes --seeds 0 1 2"
t ds_default_cells
(cd /tmp/sa_s0 && exec nice -n 10 $V/vitp $DS) > /tmp/m24logs/ds1.log 2>&1 &
P=$!
while [ ! -f /tmp/studies24/domain_shift/cells/default_s2/step3.json ] && kill -0 $P 2>/dev/null; do sleep 5; done
kill $P; wait $P; t done
t budget
(cd /tmp/sa_s0 && nice -n 10 $V/vitp study annotation-budget --config $CFG --out /tmp/studies24/annotation_budget --sources box clicks1 fine fine:0.1+box:0.9 --budgets 7200 --seeds 0 --equal_steps 304 -- --data.init_args.root /tmp/data_default) > /tmp/m24logs/budget.log 2>&1; t done rc=$?
t ds_shapes
(cd /tmp/sa_s0 && nice -n 10 $V/vitp $DS --seeds 0) > /tmp/m24logs/ds2.log 2>&1; t done rc=$?
