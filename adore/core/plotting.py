"""The one figure helper: matplotlib ``Figure`` objects without pyplot.

No pyplot means no global figure state and no backend to choose (``Figure.savefig`` renders with Agg),
so figures are safe to make from worker processes and tests, and nothing needs closing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6, 3.5), **options: Any):
    """``(figure, axis)`` for one panel, ``(figure, [axes])`` for a row or grid of panels."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout=options.pop("layout", "constrained"), **options)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes[0, 0] if rows == cols == 1 else list(axes.flat)


def save_figure(figure, path: str | Path, dpi: int = 120, **options: Any) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=dpi, **options)
    return path
