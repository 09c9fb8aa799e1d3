"""Reading the AnnData tables the stain stage consumes (prediction and QC tables)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from pastflow.errors import InputError
from pastflow.tables import read_h5ad, read_pastflow_uns


def read_cell_table(path: str | Path, what: str) -> ad.AnnData:
    """An ``.h5ad`` with ``obs["cell_id"]`` and at least one cell and gene; InputError naming
    the file (``what`` says which table it should be) otherwise."""
    table = read_h5ad(path, what, obs=("cell_id",))
    if table.n_obs == 0 or table.n_vars == 0:
        raise InputError(path, f"empty {what} ({table.n_obs} cells x {table.n_vars} genes)")
    return table


def read_unit_diameter(path: str | Path) -> float | None:
    """``uns["pastflow"]["unit_diameter_um"]`` of an ``.h5ad`` (None when absent), read
    without loading the expression matrix."""
    value = read_pastflow_uns(path, "QC table").get("unit_diameter_um")
    return None if value is None else float(value)
