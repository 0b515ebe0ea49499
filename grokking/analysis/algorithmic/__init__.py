"""From run directories to Table 1 and the paper's figures.

collect    — every run's summary, metrics and per-matrix LAR as tidy DataFrames
conditions — which runs may be averaged (they differ only in seeds) and how they are named
measure    — PC95, LAR, k_LAR and the spectra p, q at each checkpoint (cached per run)
tables     — Table 1 (RMSE of k_LAR against PC95) and the per-task table
figures    — Figures 1, 2, 3, 9, the grokking curves, the Appendix D.1 ranks, per-matrix LAR
"""

from grokking.analysis.collect import Results, collect
from grokking.analysis.measure import measure_all, measure_run, pc95
from grokking.analysis.tables import per_task_table, table1

__all__ = ["Results", "collect", "measure_all", "measure_run", "pc95", "per_task_table", "table1"]
