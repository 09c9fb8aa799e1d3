"""Reading the AnnData tables the stain stage consumes (prediction and QC tables)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from pastflow.errors import InputError


def read_cell_table(path: str | Path, what: str) -> ad.AnnData:
    """An ``.h5ad`` with ``obs["cell_id"]`` and at least one cell and gene; InputError naming
    the file (``what`` says which table it should be) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        table = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not a readable AnnData file ({err})") from None
    if "cell_id" not in table.obs:
        raise InputError(path, f'{what} has no obs["cell_id"]')
    if table.n_obs == 0 or table.n_vars == 0:
        raise InputError(path, f"empty {what} ({table.n_obs} cells x {table.n_vars} genes)")
    return table
