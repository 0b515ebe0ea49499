"""`python -m grokking.train [key=value ...]`: train one grokking run, or a sweep (`+sweeps=NAME`,
`-m`).

Configs live in `conf/algorithmic/` (config.yaml, its groups, its sweep files); the typed schema
and the checks are in grokking/algorithmic/config.py, the loop in grokking/runs/loop.py, the sweep
callbacks in grokking/runs/sweep.py.
"""

from __future__ import annotations

from grokking.algorithmic import FAMILY
from grokking.runs.command import Command

COMMAND = Command(FAMILY)
load_config = COMMAND.load_config
check_command_line = COMMAND.check_command_line


if __name__ == "__main__":
    COMMAND.main()
