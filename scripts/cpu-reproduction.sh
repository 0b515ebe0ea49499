#!/usr/bin/env bash
# The runs behind docs/results.md, one after another on one thread (the other core stays free),
# then the analysis. Rerunning resumes: finished runs are skipped, killed ones resume.
#   bash scripts/cpu-reproduction.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for sweep in batch_size batch_size_grid cpu_reproduction cpu_train_fraction; do
  python -m grokking.train +sweeps=$sweep threads=1
done
python -m grokking.analyze outputs/sweeps/cpu_reproduction outputs/sweeps/cpu_train_fraction \
  outputs/sweeps/batch_size outputs/sweeps/batch_size_grid --out outputs/cpu_reproduction-analysis
