"""A 10x feature-barcode matrix HDF5 (format version 2) read in barcode chunks.

Space Ranger's 2 um Visium HD matrix holds ~11 million barcodes; reading it whole (or through
AnnData, with a string index per bin) costs gigabytes. On disk the matrix is CSC over
features x barcodes, i.e. the CSR arrays of barcodes x features, so a run of barcodes is a
contiguous slice of ``data`` / ``indices``: :meth:`FeatureBarcodeH5.chunks` reads one run at a
time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.errors import InputError

CHUNK_BARCODES = 500_000


class FeatureBarcodeH5:
    """An open ``filtered_feature_bc_matrix.h5`` (use as a context manager).

    ``n_barcodes``, ``n_features``; ``var``: one row per feature, index = gene symbols, columns
    ``gene_ids`` and ``feature_types`` (as scanpy's ``read_10x_h5`` names them).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "missing: Space Ranger writes the filtered matrix here")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise InputError(self.path, f"not an HDF5 file ({err})") from err
        try:
            matrix = self._file["matrix"]
            self._indptr = matrix["indptr"]
            self._indices, self._data = matrix["indices"], matrix["data"]
            self._barcodes = matrix["barcodes"]
            n_features, self.n_barcodes = (int(v) for v in matrix["shape"][:])
            features = matrix["features"]
            names = _strings(features["name"][:])
            self.var = pd.DataFrame({"gene_ids": _strings(features["id"][:]),
                                     "feature_types": _strings(features["feature_type"][:])},
                                    index=pd.Index(names))
            if len(self._indptr) != self.n_barcodes + 1 or len(self.var) != n_features:
                raise InputError(self.path, f"matrix shape {n_features} x {self.n_barcodes} does not "
                                            f"match its indptr ({len(self._indptr)}) and features "
                                            f"({len(self.var)})")
        except (OSError, KeyError, ValueError, InputError) as err:
            self._file.close()
            if isinstance(err, InputError):
                raise
            raise InputError(self.path, f"not a 10x feature-barcode matrix HDF5 ({err})") from err
        self.n_features = n_features

    def chunks(self, size: int = CHUNK_BARCODES) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
        """``(barcodes as bytes (n,), counts CSR (n, n_features))`` for runs of ``size`` barcodes."""
        for start in range(0, self.n_barcodes, size):
            stop = min(start + size, self.n_barcodes)
            indptr = self._indptr[start:stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            counts = sparse.csr_matrix((self._data[lo:hi], self._indices[lo:hi], indptr - lo),
                                       shape=(stop - start, self.n_features))
            yield self._barcodes[start:stop], counts

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureBarcodeH5:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values])
