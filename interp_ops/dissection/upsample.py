"""Step 2, the activation masks: each activation map upsampled bilinearly to the mask size (sh, sw), as
NetDissect-Lite's ``imresize(mode='F')`` does with PIL, and thresholded: ``upsampled > T_u``.

PIL's bilinear resize uses half-pixel centres with edge clamping (what torch calls ``align_corners=False``; when
a map is larger than the masks, PIL's triangle filter, which is torch's antialiased bilinear). Our values and
PIL's agree to a few float32 ulps, so a pixel within an ulp or two of T_u may fall the other way than in
NetDissect-Lite.

``upsample_maps`` computes whole maps; ``ActivePixels`` finds the pixels above the threshold while evaluating
upsampled values only near it, with the same float32 operations, so it finds exactly the pixels of the dense
computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class _Axis:
    """Bilinear sampling along one axis, n -> size: output i reads source rows low[i] and low[i] + 1 with
    weights (w_low[i], w_high[i]) = (1 - t, t); half-pixel centres, clamped at the edges (a clamped output row
    reads one source row with weight 1). Output rows sharing ``low`` form one cell."""

    low: torch.Tensor  # (size,) int64, in 0..max(n - 2, 0)
    high: torch.Tensor  # (size,) int64, low + 1 (or 0 when n == 1)
    w_low: torch.Tensor  # (size,) float32
    w_high: torch.Tensor  # (size,) float32

    @staticmethod
    def build(n: int, size: int, device: torch.device) -> _Axis:
        source = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
        low = np.minimum(np.floor(source).astype(np.int64), max(n - 2, 0))
        toward_high = source - low
        return _Axis(
            *(
                torch.from_numpy(array).to(device)
                for array in (
                    low,
                    np.minimum(low + 1, n - 1),
                    (1.0 - toward_high).astype(np.float32),
                    toward_high.astype(np.float32),
                )
            )
        )

    def cells(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per cell (pair of neighbouring source rows): its output rows and their two weights."""
        cells = []
        for cell in range(int(self.low.max()) + 1):
            rows = torch.nonzero(self.low == cell)[:, 0]
            cells.append((rows, self.w_low[rows], self.w_high[rows]))
        return cells

    def padded_cells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell, its output rows padded to the widest cell's count, (cells, span) int64, and their weights
        (cells, 2, span) float32: (w_low, w_high), NaN on padding (a NaN value is never above a threshold)."""
        count = torch.bincount(self.low)
        start = torch.cumsum(count, 0) - count
        offset = torch.arange(int(count.max()), device=count.device)
        valid = offset < count[:, None]
        index = torch.where(valid, start[:, None] + offset, start[:, None])
        weights = torch.stack([self.w_low[index], self.w_high[index]], dim=1)
        return index, torch.where(valid[:, None], weights, torch.nan)


def _enlarges(maps_size: tuple[int, int], size: tuple[int, int]) -> bool:
    return size[0] >= maps_size[0] and size[1] >= maps_size[1]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, h, w) -> (M, sh, sw) float32: bilinear with half-pixel centres and edge clamping, which is what PIL's
    BILINEAR resize (NetDissect-Lite's ``imresize(mode='F')``) computes, to float32 rounding.

    Enlarging (the usual case) evaluates ``(w0 * (v00 * u0 + v01 * u1)) + (w1 * (v10 * u0 + v11 * u1))``
    elementwise, rows first, so that ``ActivePixels`` gives bit-identical values; shrinking uses torch's
    antialiased bilinear filter, which matches PIL's triangle filter then.
    """
    height, width = maps.shape[-2:]
    if not _enlarges((height, width), size):
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    rows, cols = _Axis.build(height, size[0], maps.device), _Axis.build(width, size[1], maps.device)
    along_cols = maps[:, :, cols.low] * cols.w_low + maps[:, :, cols.high] * cols.w_high  # (M, h, sw)
    return along_cols[:, rows.low, :] * rows.w_low[:, None] + along_cols[:, rows.high, :] * rows.w_high[:, None]


class ActivePixels:
    """The pixels (map, sh * sw index) where upsampled maps exceed their thresholds.

    When enlarging, only the cells (2x2 source blocks) whose maximum comes near the threshold are looked at (a
    bilinear value is a convex combination of its block, so no other pixel can pass), and in them only the columns
    whose ends come near it (down a column the value is linear between the cell's top and bottom rows). The
    margin (2^-18 of the map's largest magnitude) covers float rounding. The values compared are computed with
    the same float32 operations as ``upsample_maps``, so the pixels found are exactly the dense ones.

    Two layouts of that evaluation, chosen by measurement on 1-2 CPU threads (benchmarks/README.md): where a cell
    spans at most ``PADDED_WIDTH`` output rows and columns (enlarging up to ~10x), all cells at once, each padded to
    the widest cell (no per-cell Python loop, no sorting); beyond, grouped by cell column and by cell row, where
    the padded layout's gathered weights cost more than the loop saves.
    """

    MARGIN = 2.0**-18
    PADDED_WIDTH = 16

    def __init__(self, maps_size: tuple[int, int], size: tuple[int, int], device: torch.device):
        self.maps_size, self.size = maps_size, size
        self.sparse = _enlarges(maps_size, size) and min(maps_size) >= 2
        if self.sparse:
            rows = _Axis.build(maps_size[0], size[0], device)
            cols = _Axis.build(maps_size[1], size[1], device)
            widest = max(int(torch.bincount(axis.low).max()) for axis in (rows, cols))
            self.padded = widest <= self.PADDED_WIDTH
            if self.padded:
                self.row_cells, self.col_cells = rows.padded_cells(), cols.padded_cells()
            else:
                self.row_cells, self.col_cells = rows.cells(), cols.cells()

    def __call__(self, maps: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, h, w) maps and their (M,) float32 thresholds -> (map index, pixel index) of every active pixel."""
        if not self.sparse:
            active = upsample_maps(maps, self.size) > threshold[:, None, None]
            return torch.nonzero(active.flatten(1), as_tuple=True)
        values = maps.flatten(1)
        floor = threshold - self.MARGIN * torch.maximum(values.amax(dim=1), -values.amin(dim=1))
        # cells with a corner above the floor, i.e. whose maximum is above it (bool ORs: cheaper than max)
        above_floor = maps > floor[:, None, None]
        left_or_right = above_floor[:, :, :-1] | above_floor[:, :, 1:]
        map_index, cell_row, cell_col = torch.nonzero(left_or_right[:, :-1] | left_or_right[:, 1:], as_tuple=True)
        if self.padded:
            return self._padded(maps, threshold, floor, map_index, cell_row, cell_col)
        return self._grouped(maps, threshold, floor, map_index, cell_row, cell_col)

    def _padded(self, maps, threshold, floor, map_index, cell_row, cell_col):
        height, width = self.maps_size
        top_left = (map_index * height + cell_row) * width + cell_col
        corner_offsets = torch.tensor([0, 1, width, width + 1], device=maps.device)
        corners = maps.flatten().take(top_left[:, None] + corner_offsets)  # (N, 4): TL, TR, BL, BR
        # stage 1: per cell, the top and bottom rows along its output columns (padding has NaN weights)
        col_index, col_weights = self.col_cells
        span = col_index.shape[1]
        col_weight = col_weights.index_select(0, cell_col)  # (N, 2, span)
        upper = corners[:, 0:1] * col_weight[:, 0] + corners[:, 1:2] * col_weight[:, 1]
        lower = corners[:, 2:3] * col_weight[:, 0] + corners[:, 3:4] * col_weight[:, 1]
        level = floor.index_select(0, map_index)[:, None]
        found = torch.nonzero(((upper > level) | (lower > level)).flatten())[:, 0]
        which_cell = torch.div(found, span, rounding_mode="floor")
        map_index, cell_row = map_index.index_select(0, which_cell), cell_row.index_select(0, which_cell)
        column = col_index.flatten().take(cell_col.index_select(0, which_cell) * span + (found - which_cell * span))
        upper, lower = upper.flatten().index_select(0, found), lower.flatten().index_select(0, found)
        # stage 2: every output row of those columns
        row_index, row_weights = self.row_cells
        span = row_index.shape[1]
        row_weight = row_weights.index_select(0, cell_row)  # (Z, 2, span)
        values = upper[:, None] * row_weight[:, 0] + lower[:, None] * row_weight[:, 1]
        found = torch.nonzero((values > threshold.index_select(0, map_index)[:, None]).flatten())[:, 0]
        which_column = torch.div(found, span, rounding_mode="floor")
        row = row_index.flatten().take(cell_row.index_select(0, which_column) * span + (found - which_column * span))
        return map_index.index_select(0, which_column), row * self.size[1] + column.index_select(0, which_column)

    def _grouped(self, maps, threshold, floor, map_index, cell_row, cell_col):
        # stage 1, per cell column: the cell's top and bottom rows along its output columns
        found = []  # (map index, cell row, output column, top value, bottom value) of columns that may pass
        order = torch.argsort(cell_col, stable=True)
        map_index, cell_row, cell_col = map_index[order], cell_row[order], cell_col[order]
        bounds = torch.searchsorted(cell_col, torch.arange(len(self.col_cells) + 1, device=maps.device)).tolist()
        for col, (out_cols, w_left, w_right) in enumerate(self.col_cells):
            if bounds[col] == bounds[col + 1]:
                continue
            of_map, of_row = map_index[bounds[col] : bounds[col + 1]], cell_row[bounds[col] : bounds[col + 1]]
            upper = maps[of_map, of_row, col][:, None] * w_left + maps[of_map, of_row, col + 1][:, None] * w_right
            lower = (
                maps[of_map, of_row + 1, col][:, None] * w_left + maps[of_map, of_row + 1, col + 1][:, None] * w_right
            )
            which_cell, out_col = torch.nonzero(torch.maximum(upper, lower) > floor[of_map][:, None], as_tuple=True)
            found.append(
                (
                    of_map[which_cell],
                    of_row[which_cell],
                    out_cols[out_col],
                    upper[which_cell, out_col],
                    lower[which_cell, out_col],
                )
            )
        if not found:
            return _no_pixels(maps.device)
        map_index, cell_row, column, upper, lower = (torch.cat(parts) for parts in zip(*found))
        # stage 2, per cell row: every output row of the column
        order = torch.argsort(cell_row, stable=True)
        map_index, cell_row, column, upper, lower = (
            part[order] for part in (map_index, cell_row, column, upper, lower)
        )
        bounds = torch.searchsorted(cell_row, torch.arange(len(self.row_cells) + 1, device=maps.device)).tolist()
        found_map, found_pixel = [], []
        for row, (out_rows, w_top, w_bottom) in enumerate(self.row_cells):
            start, stop = bounds[row], bounds[row + 1]
            if start == stop:
                continue
            values = upper[start:stop, None] * w_top + lower[start:stop, None] * w_bottom  # (Z, R)
            which_column, out_row = torch.nonzero(values > threshold[map_index[start:stop]][:, None], as_tuple=True)
            found_map.append(map_index[start:stop][which_column])
            found_pixel.append(out_rows[out_row] * self.size[1] + column[start:stop][which_column])
        if not found_map:
            return _no_pixels(maps.device)
        return torch.cat(found_map), torch.cat(found_pixel)


def _no_pixels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return empty, empty
