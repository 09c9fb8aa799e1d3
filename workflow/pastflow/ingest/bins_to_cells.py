"""Visium HD 2 um bins -> cells, as bin2cell, ENACT and sopa make them.

1. :func:`paint_nuclei`: nuclei segmented on the H&E (:func:`pastflow.ingest.nuclei.iter_nucleus_tiles`)
   are rasterised onto the bin grid: a bin takes the nucleus under its centre;
2. :func:`expand_bin_labels`: each nucleus grows by up to ``distance`` bins into unlabelled
   bins, a bin going to the nearest nucleus, so cells never overlap
   (``skimage.segmentation.expand_labels``, block by block);
3. :func:`sum_bins_into_cells`: each cell's counts are the sum of its bins' (one sparse product
   per chunk of the matrix); bins in no cell are left out and tallied.

The label grid (``int32``, one entry per bin: ~3,300 x 3,300 = 44 MB for a 6.5 mm slide) is
the only whole-slide array; the H&E is read a tile at a time and the matrix a chunk of bins at
a time, so memory stays bounded on a full slide.

Grid coordinates: bin ``(array_row i, array_col j)`` is entry ``[i, j]``; its centre is
``[x, y] = [j, i]`` in grid units (:func:`grid_to_microns` gives the vendor microns).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from pastflow.ingest.common import apply_affine
from pastflow.ingest.nuclei import NucleusTile

EXPAND_BLOCK = 1024  # bins a side per expand_labels call
FOOTPRINT_ROWS = 256  # grid rows per step of the per-cell bin tallies
BARCODE_PREFIX = "s_{bin_um:03d}um_"  # Space Ranger: s_002um_RRRRR_CCCCC-1
DIGITS = 5


def grid_to_microns(bin_um: float) -> np.ndarray:
    """3x3 affine: grid ``[col, row, 1]`` -> bin centre in vendor microns ``((j + .5) b, (i + .5) b)``."""
    return np.array([[bin_um, 0, bin_um / 2], [0, bin_um, bin_um / 2], [0, 0, 1]], dtype=np.float64)


def paint_nuclei(tiles: Iterable[NucleusTile], shape: tuple[int, int],
                 grid_to_he: np.ndarray) -> tuple[np.ndarray, int]:
    """Rasterise segmented nuclei onto the bin grid.

    Args:
        tiles: the slide's nucleus tiles, each nucleus kept by one tile.
        shape: ``(n_rows, n_cols)`` of the bin grid.
        grid_to_he: 3x3 affine, grid ``[col, row, 1]`` -> H&E level-0 pixels.

    Returns:
        ``int32 (n_rows, n_cols)`` labels (0 = no nucleus; nucleus ``n`` of the tiles in
        order is ``n + 1``) and the number of nuclei seen. A bin takes the nucleus under its
        centre; where two tiles' nuclei claim a bin, the first keeps it.
    """
    labels = np.zeros(shape, np.int32)
    he_to_grid = np.linalg.inv(grid_to_he)
    n_seen = 0
    for tile in tiles:
        if not len(tile.xy):
            continue
        h, w = tile.labels.shape
        corners = tile.work_to_level0(np.array([[-0.5, -0.5], [w - 0.5, -0.5],
                                                [-0.5, h - 0.5], [w - 0.5, h - 0.5]]))
        span = apply_affine(he_to_grid, corners)
        (c0, r0), (c1, r1) = np.floor(span.min(axis=0)), np.ceil(span.max(axis=0))
        r0, r1 = int(max(r0, 0)), int(min(r1, shape[0] - 1))
        c0, c1 = int(max(c0, 0)), int(min(c1, shape[1] - 1))
        if r1 < r0 or c1 < c0:
            n_seen += len(tile.xy)
            continue
        rows, cols = (a.ravel() for a in np.mgrid[r0:r1 + 1, c0:c1 + 1])
        work = np.rint(tile.level0_to_work(apply_affine(grid_to_he, np.column_stack([cols, rows]))))
        wx, wy = work[:, 0].astype(np.int64), work[:, 1].astype(np.int64)
        on_tile = (wx >= 0) & (wx < w) & (wy >= 0) & (wy < h)
        rows, cols = rows[on_tile], cols[on_tile]
        nucleus = tile.labels[wy[on_tile], wx[on_tile]]
        free = (nucleus > 0) & (labels[rows, cols] == 0)
        labels[rows[free], cols[free]] = nucleus[free] + n_seen
        n_seen += len(tile.xy)
    return labels, n_seen


def expand_bin_labels(labels: np.ndarray, distance: float, block: int = EXPAND_BLOCK) -> np.ndarray:
    """``skimage.segmentation.expand_labels(labels, distance)`` computed block by block.

    Each block is expanded with a halo wider than ``distance``, which holds every label that
    can reach it, so the result equals the whole-grid one (up to ties between two labels at
    exactly the same distance) with memory bounded by one block.
    """
    from skimage.segmentation import expand_labels

    if distance <= 0:
        return labels.copy()
    halo = int(np.ceil(distance)) + 1
    out = np.empty_like(labels)
    n_rows, n_cols = labels.shape
    for r0 in range(0, n_rows, block):
        for c0 in range(0, n_cols, block):
            r1, c1 = min(r0 + block, n_rows), min(c0 + block, n_cols)
            wr0, wc0 = max(r0 - halo, 0), max(c0 - halo, 0)
            window = labels[wr0:min(r1 + halo, n_rows), wc0:min(c1 + halo, n_cols)]
            grown = expand_labels(window, distance) if window.any() else window
            out[r0:r1, c0:c1] = grown[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
    return out


def parse_bin_barcodes(barcodes: np.ndarray, bin_um: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(array_row, array_col)`` of Space Ranger bin barcodes ``s_002um_RRRRR_CCCCC-1``
    (bytes or str), or None when any barcode does not have that form."""
    prefix = BARCODE_PREFIX.format(bin_um=bin_um).encode()
    raw = np.asarray(barcodes).astype(bytes)
    width = len(prefix) + 2 * DIGITS + 1
    if raw.dtype.itemsize < width:
        return None
    chars = raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)
    if not (chars[:, :len(prefix)] == np.frombuffer(prefix, np.uint8)).all():
        return None
    row_digits = chars[:, len(prefix):len(prefix) + DIGITS].astype(np.int64) - ord("0")
    col_digits = chars[:, len(prefix) + DIGITS + 1:width].astype(np.int64) - ord("0")
    if ((row_digits < 0) | (row_digits > 9) | (col_digits < 0) | (col_digits > 9)).any() \
            or not (chars[:, len(prefix) + DIGITS] == ord("_")).all():
        return None
    powers = 10 ** np.arange(DIGITS - 1, -1, -1)
    return row_digits @ powers, col_digits @ powers


@dataclass
class BinTally:
    """Bins of the matrix (in tissue) and their counts: all of them, and those in a cell."""

    bins: int = 0
    bins_in_cells: int = 0
    counts: float = 0.0
    counts_in_cells: float = 0.0

    @property
    def bins_in_no_cell_fraction(self) -> float:
        return 1 - self.bins_in_cells / self.bins if self.bins else 0.0

    @property
    def counts_in_no_cell_fraction(self) -> float:
        return 1 - self.counts_in_cells / self.counts if self.counts else 0.0


def sum_bins_into_cells(chunks: Iterable[tuple[np.ndarray, np.ndarray, sparse.csr_matrix]],
                        labels: np.ndarray, n_labels: int) -> tuple[sparse.csr_matrix, BinTally]:
    """Sum bins into the cells of ``labels``.

    Args:
        chunks: ``(array_row (n,), array_col (n,), counts CSR (n, g))`` runs of the bin matrix.
        labels: ``int32`` cell of each bin on the grid (0 = none), values up to ``n_labels``.

    Returns:
        ``(n_labels, g)`` CSR counts (row ``k`` = label ``k + 1``) and the :class:`BinTally`.
    """
    tally = BinTally()
    parts, n_genes = [], None
    for rows, cols, counts in chunks:
        n_genes = counts.shape[1]
        cell = labels[rows, cols].astype(np.int64)
        per_bin = np.asarray(counts.sum(axis=1)).ravel()
        member = np.flatnonzero(cell > 0)
        tally.bins += len(cell)
        tally.bins_in_cells += len(member)
        tally.counts += float(per_bin.sum())
        tally.counts_in_cells += float(per_bin[member].sum())
        # One sparse product per chunk: (cells x bins) membership times (bins x genes).
        membership = sparse.csr_matrix((np.ones(len(member), counts.dtype), (cell[member] - 1, member)),
                                       shape=(n_labels, len(cell)))
        parts.append((membership @ counts).tocoo())
    if not parts:
        return sparse.csr_matrix((n_labels, 0)), tally
    summed = sparse.coo_matrix((np.concatenate([p.data for p in parts]),
                                (np.concatenate([p.row for p in parts]),
                                 np.concatenate([p.col for p in parts]))), shape=(n_labels, n_genes))
    return summed.tocsr(), tally


def label_footprints(labels: np.ndarray, n_labels: int,
                     block_rows: int = FOOTPRINT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Bins per label ``(n_labels,)`` and their mean grid position ``(n_labels, 2)`` ``[col, row]``
    (NaN for a label with no bin), row block by row block."""
    n_cols = labels.shape[1]
    n = np.zeros(n_labels + 1)
    sum_row, sum_col = np.zeros(n_labels + 1), np.zeros(n_labels + 1)
    for r0 in range(0, labels.shape[0], block_rows):
        block = labels[r0:r0 + block_rows].ravel()
        where = np.flatnonzero(block)
        ids = block[where]
        rows, cols = np.divmod(where, n_cols)
        n += np.bincount(ids, minlength=n_labels + 1)
        sum_row += np.bincount(ids, weights=rows + r0, minlength=n_labels + 1)
        sum_col += np.bincount(ids, weights=cols, minlength=n_labels + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.column_stack([sum_col, sum_row])[1:] / n[1:, None]
    return n[1:].astype(np.int64), centre
