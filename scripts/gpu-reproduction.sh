#!/usr/bin/env bash
# The paper's whole protocol on one GPU, packed (hydra/launcher=packed): Table 1's two sweeps
# (table1_ops: 12 tasks x 5 seeds; train_fraction: addition x 4 fractions x 5 seeds, up to 50,000
# epochs, stopping at 3 x the grokking epoch), the batch-size studies, then the analyses. Prints
# the wall time of each step and packs what docs/results.md needs (summaries, metrics, per-matrix
# LAR, checkpoint measures, analysis outputs; no checkpoints) into $OUT/gpu-reproduction.tar.gz.
# Rerunning resumes: finished runs are skipped, killed packs resume.
#   bash scripts/gpu-reproduction.sh                   # fp32, into outputs/
#   OUT=/scratch/me bash scripts/gpu-reproduction.sh precision=bf16
# Extra arguments are overrides for every training command (the tests pass a tiny config).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs}
started=$(date +%s)
step() {  # step NAME COMMAND...: run it, then print how long it took
  local name=$1 begin
  shift
  begin=$(date +%s)
  "$@"
  echo "wall time: $name $(($(date +%s) - begin)) s"
}
for sweep in table1_ops train_fraction batch_size batch_size_grid; do
  step "$sweep" python -m grokking.train +sweeps="$sweep" hydra/launcher=packed \
    hydra.sweep.dir="$OUT/sweeps/$sweep" "$@"
done
step analysis python -m grokking.analyze "$OUT/sweeps/table1_ops" "$OUT/sweeps/train_fraction" \
  --out "$OUT/results/gpu_table1"
step analysis_batch_size python -m grokking.analyze "$OUT/sweeps/batch_size" \
  "$OUT/sweeps/batch_size_grid" --out "$OUT/results/gpu_batch_size"
echo "wall time: the whole protocol $(($(date +%s) - started)) s on" \
  "$(python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU")')"
tar -czf "$OUT/gpu-reproduction.tar.gz" -C "$OUT" \
  --exclude='*.pt' --exclude='.submitit' --exclude='tensorboard' --exclude='wandb' \
  sweeps/table1_ops sweeps/train_fraction sweeps/batch_size sweeps/batch_size_grid \
  results/gpu_table1 results/gpu_batch_size
echo "packed the results page's inputs into $OUT/gpu-reproduction.tar.gz"
