"""QC: thresholds applied, counts kept raw, HVGs found where the variance is."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from pastflow.errors import InputError
from pastflow.qc.filter import run_qc
from pastflow.qc.settings import QCSettings


def make_table(n_cells=300, n_genes=60, seed=0):
    rng = np.random.default_rng(seed)
    # Ten genes switch between two cell groups at the same mean as the constant genes, so
    # only their over-dispersion can single them out.
    means = np.full((n_cells, n_genes), 5.0)
    means[: n_cells // 2, :10] = 9.5
    means[n_cells // 2 :, :10] = 0.5
    counts = rng.poisson(means).astype(np.float32)
    counts[:5] = 0  # empty cells, to be filtered
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    return adata


def test_filters_normalises_and_keeps_raw_counts():
    raw = make_table()
    out = run_qc(raw, QCSettings(min_counts=10, min_genes=5, min_cells=3, n_top_genes=10))
    assert out.n_obs == 295  # the 5 empty cells are gone
    assert np.allclose(out.layers["counts"].toarray(), raw[5:].X.toarray())
    # log1p of counts per 10,000: every cell sums to the fixed target before the log
    totals = np.expm1(out.X.toarray()).sum(axis=1)
    assert np.allclose(totals, 1e4, rtol=1e-4)
    assert out.uns["pastflow"]["qc"]["target_sum"] == 1e4
    hvg = set(out.var_names[out.var["highly_variable"]])
    assert hvg == {f"G{i}" for i in range(10)}
    assert out.uns["pastflow"]["qc"]["cells_out"] == 295


def test_no_cell_passing_is_a_clear_error():
    with pytest.raises(InputError, match="no cell passes QC"):
        run_qc(make_table(), QCSettings(min_counts=10**6), source="s.zarr")


def test_nan_counts_are_refused():
    raw = make_table()
    raw.X = raw.X.toarray()
    raw.X[3, 4] = np.nan
    with pytest.raises(InputError, match="s.zarr: 1 NaN or infinite counts"):
        run_qc(raw, source="s.zarr")


def test_he_only_table_has_nothing_to_qc():
    with pytest.raises(InputError, match="no genes"):
        run_qc(ad.AnnData(np.zeros((10, 0), dtype=np.float32)))


def test_processed_values_are_refused():
    raw = make_table()
    raw.uns["pastflow"] = {"x_is_raw_counts": False}
    with pytest.raises(InputError, match="not raw counts"):
        run_qc(raw, source="s.zarr")


def spots(n_spots=400, n_genes=80, depth=20_000, seed=0) -> ad.AnnData:
    """Spots of two tissue types at ``depth`` counts each (Poisson), every gene a sizeable
    share of the library, like the 50 most variable genes of a Visium or ST section."""
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(n_genes, 5.0), size=2)
    kind = rng.integers(0, 2, n_spots)
    library = depth * rng.lognormal(0.0, 0.3, n_spots)
    counts = rng.poisson(share[kind] * library[:, None]).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs_names = [f"s{i}" for i in range(n_spots)]
    return adata


def subsample(adata: ad.AnnData, fraction: float, seed: int = 1) -> ad.AnnData:
    """The same spots sequenced ``fraction`` as deeply: each count kept with that chance."""
    out = adata.copy()
    out.X = out.X.copy()
    out.X.data = np.random.default_rng(seed).binomial(
        out.X.data.astype(np.int64), fraction).astype(np.float32)
    return out


def test_a_tenth_of_the_depth_gives_the_same_log1p_levels():
    """Issue 17: median-depth scaling puts a 10x shallower slide ~ln(10) = 2.3 log1p units
    lower; a fixed target keeps the same tissue on the same scale."""
    full = spots()
    settings = QCSettings(min_counts=10, min_genes=5, min_cells=3, n_top_genes=20)
    deep, shallow = run_qc(full, settings), run_qc(subsample(full, 0.1), settings)
    assert deep.n_obs == shallow.n_obs == full.n_obs
    level = [np.asarray(t.X.mean(axis=0)).ravel() for t in (deep, shallow)]
    offset = level[1] - level[0]
    assert abs(offset.mean()) < 0.1 and np.abs(offset).max() < 0.3
    assert shallow.uns["pastflow"]["qc"]["target_sum"] == 1e4
