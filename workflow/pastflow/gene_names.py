"""The genes a sample measures, read from its vendor files' gene lists alone (no counts).

Used at start-up (:mod:`pastflow.preflight`) to check panel and marker genes against the data
before any job runs, so each reader opens one small file or one HDF5 dataset: a 10x
feature-barcode matrix's ``features/name`` (Xenium ``cell_feature_matrix.h5``, Space Ranger
``filtered_feature_bc_matrix.h5``) or its ``features.tsv.gz``, Xenium's ``gene_panel.json``,
an AnnData's ``var`` index (HEST ``st/<id>.h5ad``, a Visium ``.h5ad``), or the header of a
legacy ST counts table. A sample whose list cannot be found cheaply (an already converted
Xenium ``.zarr``, a layout not listed here) gives None: not checked up-front; its stage reads
the genes anyway.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pastflow.errors import InputError

GENE_EXPRESSION = "Gene Expression"  # 10x feature type of genes (not control probes)
_MATRIX_FILES = ("cell_feature_matrix.h5", "filtered_feature_bc_matrix.h5")
_FEATURE_TABLES = ("cell_feature_matrix/features.tsv.gz",
                   "filtered_feature_bc_matrix/features.tsv.gz")
# Visium HD keeps its matrices one level down, per bin size.
_SEARCH = ("", "binned_outputs/square_002um", "binned_outputs/square_008um",
           "binned_outputs/square_016um")


def sample_genes(technology: str, data: str | Path) -> set[str] | None:
    """The gene symbols measured by a sample (sheet ``technology`` and ``data``), or None
    when its files hold no gene list that is cheap to read (or none exists, e.g. H&E only)."""
    if technology == "he_only" or not data:
        return None
    data = Path(data)
    try:
        if data.is_dir():
            return _folder_genes(data)
        if data.suffix in (".h5ad", ".h5"):
            return _h5_genes(data)
        if technology == "legacy_st" and data.is_file():
            return _counts_header_genes(data)
    except (InputError, OSError, KeyError, ValueError, UnicodeDecodeError):
        return None  # unreadable here: the sample's own stage names the problem
    return None


def _folder_genes(folder: Path) -> set[str] | None:
    for sub in _SEARCH:
        base = folder / sub if sub else folder
        for name in _MATRIX_FILES:
            if (base / name).is_file():
                return _h5_genes(base / name)
        for name in _FEATURE_TABLES:
            if (base / name).is_file():
                return _feature_table_genes(base / name)
    if (folder / "gene_panel.json").is_file():
        return _xenium_panel_genes(folder / "gene_panel.json")
    return None


def _h5_genes(path: Path) -> set[str] | None:
    """A 10x matrix's gene names, or an AnnData's ``var`` index (h5py only: no counts read)."""
    import h5py

    with h5py.File(path, "r") as f:
        is_10x = "matrix" in f
        if not is_10x and "var" in f:
            var = f["var"]
            index = var.attrs.get("_index", "_index")
            index = index.decode() if isinstance(index, bytes) else str(index)
            if index in var:
                return set(_strings(var[index][:]))
    if is_10x:  # the ingest reader's own view of the features (datasets opened, not read)
        from pastflow.ingest.tenx_h5 import FeatureBarcodeH5

        with FeatureBarcodeH5(path) as matrix:
            var = matrix.var
            return set(var.index[var["feature_types"] == GENE_EXPRESSION])
    return None


def _feature_table_genes(path: Path) -> set[str]:
    """``features.tsv.gz``: id, name, feature type per line."""
    genes = set()
    with gzip.open(path, "rt") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and (len(parts) < 3 or parts[2] == GENE_EXPRESSION):
                genes.add(parts[1])
    return genes


def _xenium_panel_genes(path: Path) -> set[str] | None:
    targets = json.loads(path.read_text()).get("payload", {}).get("targets", [])
    genes = {t.get("type", {}).get("data", {}).get("name") for t in targets}
    genes.discard(None)
    return genes or None


def _counts_header_genes(path: Path) -> set[str]:
    """A legacy ST counts table (spots x genes): the header line after its first column."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    return {g for g in header[1:] if g}


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
