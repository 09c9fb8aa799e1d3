"""The one checked AnnData reader: every failure is an InputError naming the file."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pastflow.errors import InputError
from pastflow.tables import read_h5ad


@pytest.fixture
def table(tmp_path):
    obs = pd.DataFrame({"cell_id": ["a", "b", "c"]}, index=["0", "1", "2"])
    path = tmp_path / "s1.h5ad"
    ad.AnnData(np.arange(6, dtype=np.float32).reshape(3, 2), obs=obs).write_h5ad(path)
    return path


def test_reads_the_table_and_checks_its_obs_columns(table):
    read = read_h5ad(table, "QC table", obs=("cell_id",))
    assert read.shape == (3, 2) and list(read.obs["cell_id"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(read.X[2], [4.0, 5.0])
    with pytest.raises(InputError, match=r's1\.h5ad: QC table has no obs\["patient"\]') as err:
        read_h5ad(table, "QC table", obs=("cell_id", "patient"))
    assert err.value.path == str(table)


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"absent\.h5ad: prediction table not found"):
        read_h5ad(tmp_path / "absent.h5ad", "prediction table")
    with pytest.raises(InputError, match="not found"):
        read_h5ad(tmp_path, "prediction table")  # a folder is not a table
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"not an HDF5 file at all")
    with pytest.raises(InputError, match=r"garbage\.h5ad: not a readable AnnData file \(\w+"):
        read_h5ad(garbage, "embedding table")
