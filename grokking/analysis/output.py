"""The output folder: written whole or not at all, whichever families' outputs it holds."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pandas as pd

from grokking.analysis.figures import save


class OutputError(Exception):
    """The output folder cannot be made."""


class WriteFailed(Exception):
    """The outputs could not be written (a full disk); none of them reached the output folder."""


def write_into(out: Path, write: Callable[[Path], dict]) -> dict:
    """`write(folder)` into a new hidden folder beside `out`, its files then moved into `out`:
    a failure leaves nothing of them in `out`, and what `out` held is then unchanged."""
    created = not out.exists()
    try:  # beside a colleague's read-only results, the default folder cannot be made
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as error:
        raise OutputError(
            f"--out: cannot create {out} ({error.strerror}); choose another"
        ) from None
    try:
        written = write(staging)
        for path in staging.iterdir():
            path.replace(out / path.name)
    except OSError as error:
        raise WriteFailed(
            f"--out: cannot write the analysis to {out} ({error.strerror or error}); nothing "
            "of it was written: free some space or choose another"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:  # a folder this call made and nothing reached (rmdir refuses any other)
            with suppress(OSError):
                out.rmdir()
    return {name: out / path.name for name, path in written.items()}


def write_frames(frames: dict[str, pd.DataFrame], out: Path) -> dict[str, Path]:
    """Each frame as `name`.parquet; {name: path}."""
    written = {name: out / f"{name}.parquet" for name in frames}
    for name, frame in frames.items():
        frame.to_parquet(written[name], index=False)
    return written


def write_figures(plots: dict, out: Path, save=save) -> dict[str, Path]:
    """Each figure as `name`.png and .pdf (`save`); {name: the png}. None: nothing to plot."""
    written = {}
    for name, fig in plots.items():
        if fig is None:
            print(f"{name}: nothing to plot (no matching runs)")
            continue
        written[name] = save(fig, out, name)[0]
    return written
