"""What every family's figures share: a grid of panels, and saving a figure as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{suffix}" for suffix in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


def grid(n_panels: int, ncols: int = 4, size=(3.6, 2.8), **kwargs):
    ncols = min(ncols, n_panels)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kwargs
    )
    for ax in axes.flat[n_panels:]:
        ax.remove()
    return fig, list(axes.flat[:n_panels])  # the panels' axes only, so zip(strict=True) holds
