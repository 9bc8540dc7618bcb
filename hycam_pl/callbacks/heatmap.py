"""Heatmaps as TensorBoard images without matplotlib: each cell becomes a block of colour."""

from __future__ import annotations

import torch

# A few anchor colours of the viridis map; values in between are interpolated.
_VIRIDIS = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
)


def heatmap_image(matrix: torch.Tensor, cell: int = 16, vmin: float = 0.0, vmax: float = 1.0) -> torch.Tensor:
    """(rows, cols) values -> (3, rows*cell, cols*cell) uint8 image; NaN cells are grey."""
    values = matrix.detach().float().cpu()
    nan = torch.isnan(values)
    scaled = ((values.nan_to_num(vmin) - vmin) / max(vmax - vmin, 1e-12)).clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = scaled.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (scaled - low).unsqueeze(-1)
    colours = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    colours[nan] = 128.0
    # Round the (rows, cols, 3) colours before enlarging: cheaper than rounding every pixel.
    small = colours.round().to(torch.uint8).permute(2, 0, 1)
    return small.repeat_interleave(cell, 1).repeat_interleave(cell, 2).contiguous()
