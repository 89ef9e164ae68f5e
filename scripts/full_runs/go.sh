#!/usr/bin/env bash
# The full-size runs of the examples on one GPU in one call (about 4.5 + 6.5 minutes on an H200):
# priors first (cached for all jobs), then the example jobs in parallel, each with a deadline;
# results packed into $OUT/r.tgz every 15 s (a cut-off run keeps what finished). Then, here:
#   tar xzf r.tgz -C RES && python scripts/full_runs/merge.py RES
# Needs: the data home (SKKPRIOR_DATA; default .gpurun/data, a copy carried to the GPU machine),
# skorch and tabulate wheels in .whl/ (the GPU image has neither), OUT (a folder for r.tgz).
#   BUDGET=520 bash scripts/full_runs/go.sh                       # 13 jobs, the first call
#   JOBS="grid prog tune" BUDGET=420 bash scripts/full_runs/go.sh  # the second call
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export SKKPRIOR_DATA=${SKKPRIOR_DATA:-$PWD/.gpurun/data} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
R=/tmp/res; mkdir -p $R
pack() { tar czf $OUT/r.tgz.tmp -C $R . 2>/dev/null; [ -s $OUT/r.tgz.tmp ] && mv -f $OUT/r.tgz.tmp $OUT/r.tgz; }
{ nvidia-smi; python3 -c "import torch, sklearn, skorch; print(torch.__version__, sklearn.__version__, skorch.__version__)"; } > $R/env.txt 2>&1
timeout 150 python3 scripts/full_runs/drive.py priors $R/priors > $R/priors.log 2>&1; echo "priors rc $? at $(( $(date +%s) - T0 )) s" | tee -a $R/status.txt
pack
END=$(( T0 + ${BUDGET:-540} ))
JOBS="${JOBS:-fs_F_1-5-10_0-3 fs_F_50-100_0-3 fs_F_all_0-1 fs_F_all_1-1 fs_F_all_2-1 fs_A_1-5-10_0-3 fs_A_50-100-all_0-3 bayes cont_perm cont_seq cert_A cert_A_damped cert_F_zero}"
for j in $JOBS; do
  ( timeout $(( END - $(date +%s) )) python3 scripts/full_runs/drive.py $j $R/$j > $R/$j.log 2>&1
    echo "$j rc $? at $(( $(date +%s) - T0 )) s" >> $R/status.txt ) &
done
while [ -n "$(jobs -r)" ]; do sleep 15; pack; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $R/gpu_util.txt; done
pack
cat $R/status.txt; tail -n 2 $R/*.log
