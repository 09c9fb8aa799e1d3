"""10x Genomics on-disk pieces shared by the Xenium, Visium and Visium HD writers.

- the HDF5 feature-barcode matrix (``matrix/{barcodes,data,indices,indptr,shape,features/...}``,
  format version 2, as written by Cell Ranger >= 3, Space Ranger and Xenium Onboard Analysis);
- Xenium cell ids (``"aaabcdef-1"``: a uint32 prefix written as 8 letters a-p, and a suffix);
- Visium spot barcodes (16 nucleotides + ``"-1"``).
"""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
from scipy import sparse

GENE_EXPRESSION = "Gene Expression"


def feature_ids(genes: list[str]) -> list[str]:
    """Stable placeholder feature ids (the simulator has no Ensembl mapping): ``SIMG00000001``..."""
    return [f"SIMG{i + 1:08d}" for i in range(len(genes))]


def write_feature_barcode_h5(path, counts: sparse.spmatrix, barcodes: list[str] | np.ndarray,
                             genes: list[str],
                             *, ids: list[str] | None = None, feature_types: list[str] | None = None,
                             genome: str = "GRCh38", library_id: str = "sample",
                             chemistry: str = "", software_version: str = "") -> None:
    """Write a 10x feature-barcode matrix HDF5 (format version 2).

    ``counts``: ``(n_barcodes, n_features)`` integer counts; ``barcodes``: strings, or a
    fixed-width bytes array (``S``) written as is. On disk the matrix is stored
    transposed (features x barcodes, CSC by barcode), i.e. exactly the CSR arrays of ``counts``.
    """
    csr = sparse.csr_matrix(counts)
    csr.sort_indices()
    n_barcodes, n_features = csr.shape
    if len(barcodes) != n_barcodes or len(genes) != n_features:
        raise ValueError("counts shape does not match barcodes x genes")
    ids = ids if ids is not None else feature_ids(genes)
    feature_types = feature_types if feature_types is not None else [GENE_EXPRESSION] * n_features

    def strings(values: list[str] | np.ndarray) -> np.ndarray:
        if isinstance(values, np.ndarray) and values.dtype.kind == "S":
            return values  # already fixed-width bytes (millions of 2 um bin barcodes)
        return np.array([v.encode("utf-8") for v in values], dtype=f"S{max(1, max(map(len, values), default=1))}")

    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([library_id.encode()], dtype="S")
        f.attrs["original_gem_groups"] = np.array([1])
        f.attrs["chemistry_description"] = chemistry
        f.attrs["software_version"] = software_version
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=strings(barcodes), compression="gzip")
        m.create_dataset("data", data=csr.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=csr.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=csr.indptr.astype(np.int64), compression="gzip")
        m.create_dataset("shape", data=np.array([n_features, n_barcodes], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("id", data=strings(ids))
        feats.create_dataset("name", data=strings(genes))
        feats.create_dataset("feature_type", data=strings(feature_types))
        feats.create_dataset("genome", data=strings([genome] * n_features))


def xenium_cell_ids(prefixes: np.ndarray, suffix: int = 1) -> np.ndarray:
    """Xenium string ids for uint32 ``prefixes``: each hex digit 0-f becomes a letter a-p.

    Matches Xenium Onboard Analysis >= 1.3 (and the ``cell_id`` pairs in ``cells.zarr.zip``).
    """
    prefixes = np.asarray(prefixes, dtype=np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    letters = ((prefixes[:, None] >> shifts) & 0xF).astype(np.uint8) + ord("a")
    return np.char.add(letters.view("S8").ravel().astype("U8"), f"-{suffix}")


def xenium_cell_id_prefixes(cell_ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`xenium_cell_ids`: the uint32 prefix of each ``"aaabcdef-1"`` id."""
    letters = np.array([s[:8] for s in cell_ids], dtype="S8").view(np.uint8).reshape(-1, 8)
    nibbles = (letters - ord("a")).astype(np.uint32)
    return (nibbles << np.arange(28, -1, -4, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


def spot_barcodes(keys: list[str]) -> list[str]:
    """Deterministic 16-nt barcodes (``ACGT...-1``), one per key, distinct for distinct keys."""
    out = []
    for key in keys:
        digest = hashlib.sha256(key.encode()).digest()
        out.append("".join("ACGT"[(byte >> shift) & 3] for byte in digest[:4] for shift in (6, 4, 2, 0)) + "-1")
    if len(set(out)) != len(out):
        raise ValueError("barcode collision")
    return out
