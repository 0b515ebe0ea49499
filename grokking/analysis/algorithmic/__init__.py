"""The grokking family's analysis, from run directories to Table 1 and the paper's figures:
collect (what it reads of a run), conditions (which runs may be averaged), measure (PC95, LAR,
k_LAR, p and q at each checkpoint), baselines (WeightWatcher's α, RankMe and the weight norm),
tables, figures, alarms (scored against the grokking epoch), forecast (whether a run will grok,
from the first tenth or quarter of its budget), report (all of it written out)."""

from grokking.analysis.algorithmic.collect import READER, collect
from grokking.analysis.algorithmic.measure import measure_all, measure_run, pc95
from grokking.analysis.algorithmic.report import NOUN, prepare
from grokking.analysis.algorithmic.tables import per_task_table, table1
from grokking.analysis.collect import Results

__all__ = ["NOUN", "READER", "Results", "collect", "measure_all", "measure_run", "pc95"]
__all__ += ["per_task_table", "prepare", "table1"]
