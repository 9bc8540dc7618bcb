"""Labelled heatmaps (matplotlib, Agg): one rendering for TensorBoard images and for the notebook's figures.

Why not pyplot: the callbacks render inside training processes, possibly from several threads or without a
display; ``matplotlib.figure.Figure`` with an Agg canvas touches no global state and needs no backend switch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MIN_WIDTH_PX = 480  # readable in TensorBoard's image card (the issue asks for at least 400)
DPI = 100
MISSING = "–"  # cells without data (a task absent from the evaluated examples)


def heatmap_figure(
    values: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar_label: str = "share of tokens",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    fmt: str = "{:.2f}",
    bold_row_max: bool = False,
) -> Figure:
    """A (rows, cols) matrix as a labelled heatmap: ticks named by ``row_labels``/``col_labels``, the value
    written in every cell (``MISSING`` for NaN), a colour bar, and fixed colour limits (``vmin``/``vmax``;
    0 to 1 for shares) so that images of different steps and runs compare. ``None`` limits follow the data.
    ``bold_row_max`` writes each row's largest value in bold (e.g. the most-used expert of a layer).
    """
    matrix = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor) else values, float)
    if matrix.ndim != 2 or matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"heatmap of shape {matrix.shape} needs {matrix.shape[0] if matrix.ndim == 2 else '?'} row labels "
            f"and {matrix.shape[-1]} column labels; got {len(row_labels)} and {len(col_labels)}"
        )
    rows, cols = matrix.shape
    label_width = 0.09 * max((len(str(label)) for label in row_labels), default=1)
    width = max(MIN_WIDTH_PX / DPI, 2.4 + label_width + 0.75 * cols)
    height = 1.7 + 0.42 * rows
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = _colormap(cmap)
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    fontsize = "small" if cols <= 8 else "x-small"
    row_max = np.nanmax(np.where(np.isnan(matrix), -np.inf, matrix), axis=1)
    for (row, col), value in np.ndenumerate(matrix):
        if np.isnan(value):
            text, colour = MISSING, "black"
        else:
            red, green, blue, _ = colours(image.norm(value))
            text = fmt.format(value)
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
        weight = "bold" if bold_row_max and value == row_max[row] else "normal"
        axes.text(
            col, row, text, ha="center", va="center", color=colour, fontsize=fontsize, fontweight=weight
        )
    axes.set_xticks(range(cols), labels=[str(label) for label in col_labels])
    axes.set_yticks(range(rows), labels=[str(label) for label in row_labels])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axes, label=colorbar_label)
    return figure


def figure_pixels(figure: Figure) -> np.ndarray:
    """The rendered figure as an (height, width, 3) uint8 array, what ``SummaryWriter.add_image`` takes (HWC)."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _colormap(name: str):
    """A copy of the named colour map with NaN cells drawn light grey."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#d9d9d9")
