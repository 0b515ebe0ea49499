#!/usr/bin/env bash
# The runs behind docs/results.md, one after another on one thread each, then the two analyses
# (Table 1 and the figures; the batch-size study on its own, since its 10-20-epoch runs are not
# Table 1 material). Rerunning resumes: finished runs are skipped, killed ones resume.
#   bash scripts/cpu-reproduction.sh            (about 1 h 40 min of one core here)
set -euo pipefail
cd "$(dirname "$0")/.."
for sweep in batch_size batch_size_grid cpu_reproduction cpu_no_grok cpu_s5 cpu_train_fraction; do
  python -m grokking.train +sweeps=$sweep threads=1
done
python -m grokking.analyze outputs/sweeps/cpu_reproduction outputs/sweeps/cpu_no_grok \
  outputs/sweeps/cpu_s5 outputs/sweeps/cpu_train_fraction --out outputs/results/table1
python -m grokking.analyze outputs/sweeps/batch_size outputs/sweeps/batch_size_grid \
  --out outputs/results/batch_size
