"""Read the per-sample AnnData tables that stages hand to each other."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from pastflow.contracts import TABLE_KEY
from pastflow.errors import InputError


def read_ingested_table(zarr_path: str | Path) -> ad.AnnData:
    """Read only the AnnData table of an ingested SpatialData zarr (fast: images untouched)."""
    if not Path(zarr_path).exists():
        raise InputError(zarr_path, "ingested sample not found")
    table = Path(zarr_path) / "tables" / TABLE_KEY
    if not table.is_dir():
        raise InputError(zarr_path, f"not an ingested sample (no tables/{TABLE_KEY} inside)")
    return ad.read_zarr(table)
