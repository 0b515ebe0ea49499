"""The language-model family (the paper's §5 at laptop scale): Gemma-2 decoders trained with Adam
or Muon on nested subsets of one corpus (Python's own standard library source by default), for
one token budget, so that the small subsets repeat for many epochs and overfit. `FAMILY` is what
the run machinery (grokking.runs) trains; `python -m grokking.lm` is its command."""

from __future__ import annotations

from grokking.lm.config import LMConfig, validate
from grokking.lm.data import dataset
from grokking.lm.engine import LMEngine
from grokking.lm.record import LMRecord
from grokking.runs import loop
from grokking.runs.command import Command
from grokking.runs.family import Family

FAMILY = Family(
    name="lm",
    schema=LMConfig,
    validate=validate,
    record=LMRecord,
    engine=LMEngine,
    prepare=dataset,  # tokenizes once (cached) and checks data.train_tokens against the corpus
)


def train(cfg: LMConfig, run_dir, files: dict[str, str] | None = None) -> dict:
    """Train (or resume) one language-model run into `run_dir` (`runs.loop.train`)."""
    return loop.train(FAMILY, cfg, run_dir, files)


COMMAND = Command(FAMILY)
load_config = COMMAND.load_config  # the config `python -m grokking.lm *overrides` would run
