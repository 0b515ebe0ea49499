"""The language-model family's analysis (the paper's §5): collect (what it reads of a run, its
condition and baseline), overfitting (the overfitting step, the LAR differential, LAR's decline),
tables, figures, alarms (scored against the overfitting step), report (all of it written out)."""

from grokking.analysis.lm.collect import READER, collect
from grokking.analysis.lm.report import NOUN, prepare

__all__ = ["NOUN", "READER", "collect", "prepare"]
