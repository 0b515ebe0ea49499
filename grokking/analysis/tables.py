"""The one table writer: every table of every family as md, tex and csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_table(frame: pd.DataFrame, out_dir: Path, name: str, *, tidy: pd.DataFrame | None = None):
    """`name`.md and `name`.tex from `frame`, `name`.csv from `tidy` (default: `frame`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = not isinstance(frame.index, pd.RangeIndex)  # a row-number index means nothing
    (out_dir / f"{name}.md").write_text(frame.to_markdown(index=index) + "\n")
    (out_dir / f"{name}.tex").write_text(frame.to_latex(index=index))
    (tidy if tidy is not None else frame).to_csv(out_dir / f"{name}.csv", index=False)
