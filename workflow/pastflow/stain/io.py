"""Reading the AnnData tables the stain stage consumes (prediction and QC tables)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from pastflow.errors import InputError
from pastflow.tables import read_h5ad


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
    import h5py
    from anndata.io import read_elem

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "QC table not found")
    try:
        with h5py.File(path, "r") as f:
            meta = f.get("uns/pastflow")
            value = (read_elem(meta).get("unit_diameter_um") if isinstance(meta, h5py.Group)
                     else None)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not a readable AnnData file ({err})") from None
    return None if value is None else float(value)
