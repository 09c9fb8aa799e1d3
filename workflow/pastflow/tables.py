"""Read the per-sample AnnData tables that stages hand to each other."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import anndata as ad

from pastflow.contracts import TABLE_KEY
from pastflow.errors import InputError


def read_h5ad(path: str | Path, what: str, *, obs: Sequence[str] = ()) -> ad.AnnData:
    """An ``.h5ad`` file, with the ``obs`` columns ``obs``.

    ``what`` says which table the file should be (``"QC table"``), for the messages.

    Raises:
        InputError: naming the file, when it is missing, not a readable AnnData file, or
            lacks one of the ``obs`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        table = ad.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many types on a file that is not one
        problem = f"not a readable AnnData file ({type(err).__name__}: {err})"
        raise InputError(path, problem) from err
    for column in obs:
        if column not in table.obs:
            raise InputError(path, f'{what} has no obs["{column}"]')
    return table


def read_pastflow_uns(path: str | Path, what: str, group: str = "pastflow") -> dict:
    """``uns[group]`` (the ``uns["pastflow"]`` record, or a part such as ``"pastflow/qc"``) of
    an ``.h5ad``, read without loading its matrices; {} when absent.

    Raises:
        InputError: naming the file, when it is missing or not a readable AnnData file.
    """
    import h5py
    from anndata.io import read_elem

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        with h5py.File(path, "r") as f:
            record = f.get(f"uns/{group}")
            return read_elem(record) if isinstance(record, h5py.Group) else {}
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not a readable AnnData file ({err})") from None


def read_ingested_table(zarr_path: str | Path) -> ad.AnnData:
    """Read only the AnnData table of an ingested SpatialData zarr (fast: images untouched)."""
    if not Path(zarr_path).exists():
        raise InputError(zarr_path, "ingested sample not found")
    table = Path(zarr_path) / "tables" / TABLE_KEY
    if not table.is_dir():
        raise InputError(zarr_path, f"not an ingested sample (no tables/{TABLE_KEY} inside)")
    return ad.read_zarr(table)
