"""``make bench``: Visium HD 2 um bins summed into cells, on a slide of ``GRID`` x ``GRID`` bins.

The input is synthetic and written once into a temporary folder: a Space Ranger 2 um
``filtered_feature_bc_matrix.h5`` (every bin in tissue, barcodes ``s_002um_RRRRR_CCCCC-1``,
Poisson counts over ``N_GENES`` genes, ``UMI_PER_BIN`` per bin on average) and a nucleus
label grid (disks of ``NUCLEUS_BINS`` bins radius on a jittered lattice, one every
``SPACING_BINS`` bins). The nucleus segmentation on the H&E is not part of it: a real slide's
H&E (~26,000^2 px) takes longer to segment than a benchmark should; this measures what follows
it, which is what scales with the bins.

- pastflow: in a fresh interpreter, ``expand_bin_labels`` (nuclei grown by 2 bins) ->
  ``sum_bins_into_cells`` streaming the matrix chunk by chunk (``read_bin_chunks``: barcodes
  parsed, bins looked up on the grid) -> ``label_footprints``; wall time, and peak RSS of the
  child (``VmHWM``) beside its RSS before the step (imports and the label grid);
- naive: one bin at a time (barcode parsed with ``int()``, its cell looked up, its row added
  to that cell's dense accumulator in a dict), on the first ``NAIVE_BINS`` bins, as bins/s.

Writes ``results/bench/visium_hd_bins.json`` (``bins``, ``seconds``, ``bins_per_s``,
``peak_mb``, ``naive_bins_per_s``, ``speedup_vs_naive``, ...) and prints it. The naive and
pastflow sums of the same bins are asserted equal, and counts conserved; times are reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_bench_patches import BENCH, REPO

GRID = int(os.environ.get("PASTFLOW_BENCH_HD_GRID", 2400))  # 2400^2 = 5.76 million 2 um bins
N_GENES = 500
UMI_PER_BIN = 1.5
SPACING_BINS = 6  # a cell every 12 um
NUCLEUS_BINS = 2.0  # nucleus radius, bins
EXPAND_BINS = 2.0  # the default expand_um (4 um) in 2 um bins
NAIVE_BINS = 50_000
SEED = 0

STEP_SCRIPT = """
import json, sys, time
import numpy as np
from pastflow.ingest.bins_to_cells import expand_bin_labels, label_footprints, sum_bins_into_cells
from pastflow.ingest.tenx_h5 import FeatureBarcodeH5
from pastflow.ingest.visium_hd import read_bin_chunks

def rss(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024

nuclei = np.load(sys.argv[1])
before = rss("VmRSS:")
start = time.perf_counter()
cells = expand_bin_labels(nuclei, float(sys.argv[3]))
n_labels = int(nuclei.max())
with FeatureBarcodeH5(sys.argv[2]) as matrix:
    counts, tally = sum_bins_into_cells(read_bin_chunks(matrix, cells.shape, "the nucleus grid", False),
                                        cells, n_labels)
n_bins, centre = label_footprints(cells, n_labels)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": rss("VmHWM:"), "rss_before_mb": before,
      "bins": tally.bins, "counts": tally.counts, "counts_in_cells": tally.counts_in_cells,
      "cells_counts": float(counts.sum()), "n_cells": int((n_bins > 0).sum()), "nnz_cells": counts.nnz}))
"""


def write_inputs(folder: Path) -> tuple[Path, Path, int]:
    """The synthetic 2 um matrix and nucleus grid: ``(labels.npy, matrix.h5, nnz)``."""
    from scipy import sparse

    from pastflow.simulate.tenx import write_feature_barcode_h5
    from pastflow.simulate.visium_hd import bin_barcode_bytes

    rng = np.random.default_rng(SEED)
    n = GRID * GRID
    # Counts: bin b has Poisson(UMI_PER_BIN) transcripts of random genes.
    per_bin = rng.poisson(UMI_PER_BIN, n)
    rows = np.repeat(np.arange(n), per_bin)
    counts = sparse.csr_matrix((np.ones(rows.size, np.int32), (rows, rng.integers(0, N_GENES, rows.size))),
                               shape=(n, N_GENES))
    counts.sum_duplicates()
    nnz = counts.nnz
    del rows
    barcodes = bin_barcode_bytes(2, *np.divmod(np.arange(n), GRID))
    matrix = folder / "filtered_feature_bc_matrix.h5"
    write_feature_barcode_h5(matrix, counts, barcodes, [f"G{i}" for i in range(N_GENES)])
    del barcodes, counts
    # Nuclei: disks on a jittered lattice.
    first = SPACING_BINS // 2
    centres = np.mgrid[first:GRID:SPACING_BINS, first:GRID:SPACING_BINS].reshape(2, -1).T
    centres = centres + rng.integers(-1, 2, centres.shape)
    labels = np.zeros((GRID, GRID), np.int32)
    w = int(np.ceil(NUCLEUS_BINS))
    for dy in range(-w, w + 1):
        for dx in range(-w, w + 1):
            if dx * dx + dy * dy <= NUCLEUS_BINS**2:
                yy, xx = np.clip(centres[:, 0] + dy, 0, GRID - 1), np.clip(centres[:, 1] + dx, 0, GRID - 1)
                labels[yy, xx] = np.arange(1, len(centres) + 1)
    path = folder / "nuclei.npy"
    np.save(path, labels)
    return path, matrix, nnz


def naive_rate(labels_path: Path, matrix_path: Path) -> tuple[float, dict, object]:
    """Bins/s of a per-bin Python loop over the first :data:`NAIVE_BINS` bins; its sums; the chunk."""
    from pastflow.ingest.tenx_h5 import FeatureBarcodeH5

    cells = np.load(labels_path)  # nuclei only: growth is not what the loop is slow at
    with FeatureBarcodeH5(matrix_path) as matrix:
        barcodes, counts = next(matrix.chunks(NAIVE_BINS))
    start = time.perf_counter()
    sums: dict[int, np.ndarray] = {}
    for i, barcode in enumerate(barcodes):
        text = barcode.decode()
        cell = int(cells[int(text[8:13]), int(text[14:19])])
        if cell:
            row = counts.getrow(i)
            sums.setdefault(cell, np.zeros(counts.shape[1]))[row.indices] += row.data
    return len(barcodes) / (time.perf_counter() - start), sums, (barcodes, counts, cells)


@pytest.mark.slow
def test_bench_visium_hd_bins(tmp_path):
    from pastflow.ingest.bins_to_cells import parse_bin_barcodes, sum_bins_into_cells

    start = time.perf_counter()
    labels_path, matrix_path, nnz = write_inputs(tmp_path)
    print(f"\nsynthetic HD slide: {GRID}^2 = {GRID * GRID:,} bins, {nnz:,} non-zeros, written in "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    process = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(labels_path), str(matrix_path),
                              str(EXPAND_BINS)], cwd=REPO, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-4000:]
    step = json.loads(next(line[7:] for line in process.stdout.splitlines() if line.startswith("RESULT ")))
    assert step["bins"] == GRID * GRID
    assert step["cells_counts"] == pytest.approx(step["counts_in_cells"])  # nothing lost, nothing twice

    naive_bins_per_s, naive_sums, (barcodes, counts, nuclei) = naive_rate(labels_path, matrix_path)
    rows, cols = parse_bin_barcodes(barcodes, 2)
    fast, _ = sum_bins_into_cells([(rows, cols, counts)], nuclei, int(nuclei.max()))
    for cell, expected in naive_sums.items():
        np.testing.assert_array_equal(fast[cell - 1].toarray().ravel(), expected)

    bins_per_s = step["bins"] / step["seconds"]
    report = {
        "bins": step["bins"], "grid": [GRID, GRID], "n_genes": N_GENES, "nnz": int(nnz),
        "n_cells": step["n_cells"], "expand_bins": EXPAND_BINS,
        "seconds": round(step["seconds"], 2), "bins_per_s": round(bins_per_s),
        "peak_mb": round(step["peak_mb"], 1), "rss_before_step_mb": round(step["rss_before_mb"], 1),
        "naive_bins": NAIVE_BINS, "naive_bins_per_s": round(naive_bins_per_s),
        "speedup_vs_naive": round(bins_per_s / naive_bins_per_s, 1),
        "measures": "nuclei given (no H&E segmentation): grow, stream the matrix, sum, footprints",
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "visium_hd_bins.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"bins -> cells: {bins_per_s:,.0f} bins/s ({report['speedup_vs_naive']}x the per-bin loop), "
          f"peak RSS {report['peak_mb']:.0f} MB")
