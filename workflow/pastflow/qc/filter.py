"""Filter, normalise and select highly variable genes with scanpy.

Input: the ingested AnnData (raw counts in ``X``). Output: the same cells minus those failing
the thresholds, with ``layers["counts"]`` (raw), ``X`` = log1p of counts scaled to
``target_sum`` per cell (counts per 10,000 by default; :mod:`pastflow.qc.scale`),
``var["highly_variable"]`` and the QC metrics in ``obs``/``var``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from pastflow.errors import InputError
from pastflow.qc.settings import QCSettings

log = logging.getLogger(__name__)


def _check_counts(adata: ad.AnnData, source: str) -> None:
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(values)):
        raise InputError(source, f"{int(np.sum(~np.isfinite(values)))} NaN or infinite counts")
    if values.size and values.min() < 0:
        raise InputError(source, "negative counts")


def run_qc(adata: ad.AnnData, thresholds: QCSettings = QCSettings(),
           source: str = "table") -> ad.AnnData:
    """Return a filtered, normalised copy of ``adata`` (cells x genes, raw counts in ``X``).

    ``source`` names the input in error messages.
    """
    if adata.n_vars == 0:
        raise InputError(source, "the table has no genes (an H&E-only sample has nothing to QC)")
    if not adata.uns.get("pastflow", {}).get("x_is_raw_counts", True):
        raise InputError(source, "the table holds processed values, not raw counts "
                                 "(normalisation would be wrong); give the raw count matrix")
    adata = adata.copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    _check_counts(adata, source)
    n_cells_in, n_genes_in = adata.shape

    sc.pp.calculate_qc_metrics(adata, percent_top=None, log1p=False, inplace=True)
    keep = (adata.obs["total_counts"] >= thresholds.min_counts) & (
        adata.obs["n_genes_by_counts"] >= thresholds.min_genes)
    adata = adata[keep.to_numpy()].copy()
    if adata.n_obs == 0:
        raise InputError(source, f"no cell passes QC (min_counts={thresholds.min_counts}, "
                                 f"min_genes={thresholds.min_genes}; {n_cells_in} cells in)")
    sc.pp.filter_genes(adata, min_cells=thresholds.min_cells)
    if adata.n_vars < 2:
        raise InputError(source, f"fewer than 2 genes detected in >= {thresholds.min_cells} cells")

    adata.layers["counts"] = adata.X.copy()
    # Pearson residuals rank genes by over-dispersion of the raw counts; unlike the mean-binned
    # dispersion of flavor="seurat" this stays sound on targeted panels of a few hundred genes.
    sc.experimental.pp.highly_variable_genes(
        adata, flavor="pearson_residuals", layer="counts",
        n_top_genes=min(thresholds.n_top_genes, adata.n_vars))
    # A fixed target, not each slide's own median depth: a slide sequenced ten times less
    # deeply must give the same log1p levels, or a model trained on one scale mis-predicts
    # the other (issue 17: a 653-count section sat 1.7 log1p units below its predictions).
    sc.pp.normalize_total(adata, target_sum=thresholds.target_sum)
    sc.pp.log1p(adata)
    adata.uns.setdefault("pastflow", {})
    adata.uns["pastflow"]["qc"] = {
        **thresholds.to_dict(),  # target_sum among them: the scale of X
        "cells_in": n_cells_in, "cells_out": adata.n_obs,
        "genes_in": n_genes_in, "genes_out": adata.n_vars,
    }
    log.info("QC %s: %d/%d cells, %d/%d genes kept, %d highly variable", source, adata.n_obs,
             n_cells_in, adata.n_vars, n_genes_in, int(adata.var["highly_variable"].sum()))
    return adata

