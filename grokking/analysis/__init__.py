"""From run directories to Table 1 and the paper's figures.

collect   — every run's summary, metrics and per-matrix LAR as tidy DataFrames
measure   — PC95, LAR, k_LAR and the spectra p, q at each checkpoint (cached per run)
tables    — Table 1 (RMSE of k_LAR against PC95) and the per-task table
figures   — Figures 1, 2, 3, 9, the Appendix D.1 ranks and the per-matrix LAR figure
"""

from grokking.analysis.collect import Results, collect
from grokking.analysis.measure import measure_all, measure_run, pc95
from grokking.analysis.tables import per_task_table, table1

__all__ = ["Results", "collect", "measure_all", "measure_run", "pc95", "per_task_table", "table1"]
