"""Tissue-microarray core maps (pastflow.cores) and the per-core patients survival uses."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pastflow.cores import (CellPatients, cohort_patients, parse_core_map_args, read_core_map,
                            sheet_core_patients)
from pastflow.errors import InputError
from pastflow.survival.features import hscore_features, pathway_features, read_cell_embeddings

HEADER = "core\tpatient\tx_px\ty_px\tradius_px\n"


def core_map(tmp_path, rows: str, name: str = "cores.tsv"):
    path = tmp_path / name
    path.write_text(HEADER + rows)
    return path


def test_cells_belong_to_the_core_whose_disc_holds_them(tmp_path):
    cores = read_core_map(core_map(tmp_path, "A1\tP1\t100\t100\t50\nA2\tP2\t300\t100\t50\n"
                                             "B1\tP1\t100\t300\t50\n"))
    assert cores.patients == ["P1", "P2"]  # P1 has two cores, listed once
    x = np.array([100.0, 149.0, 151.0, 300.0, 100.0, 200.0])
    y = np.array([100.0, 100.0, 100.0, 140.0, 300.0, 200.0])
    assigned = cores.assign(x, y)
    assert assigned.tolist() == ["A1", "A1", "", "A2", "B1", ""]
    assert cores.patients_of(assigned).tolist() == ["P1", "P1", "", "P2", "P1", ""]


@pytest.mark.parametrize("rows, problem", [
    ("", "no cores"),
    ("A1\tP1\t100\t100\t0\n", "radius_px.*positive"),
    ("A1\tP1\tleft\t100\t10\n", "x_px.*not a number"),
    ("A1\tP 1\t100\t100\t10\n", "patient.*letters"),
    ("A1\tP1\t100\t100\t10\nA1\tP2\t300\t100\t10\n", "core 'A1' is listed on lines \\[2, 3\\]"),
    ("A1\tP1\t100\t100\t60\nA2\tP2\t200\t100\t60\n", "'A1' \\(line 2\\) and 'A2' \\(line 3\\) overlap"),
])
def test_bad_core_maps_name_the_line_and_the_problem(tmp_path, rows, problem):
    with pytest.raises(InputError, match=problem):
        read_core_map(core_map(tmp_path, rows))


def test_a_core_map_without_its_columns_or_file_is_refused(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("core\tpatient\tx\ty\n")
    with pytest.raises(InputError, match="missing column\\(s\\) x_px, y_px, radius_px"):
        read_core_map(bad)
    with pytest.raises(InputError, match="core map not found"):
        read_core_map(tmp_path / "absent.tsv")
    with pytest.raises(InputError, match="SAMPLE=PATH"):
        parse_core_map_args([str(bad)])


def test_the_cohort_of_a_sheet_with_a_tma_lists_the_cores_patients(tmp_path):
    path = core_map(tmp_path, "A1\tTMA1-A1\t100\t100\t50\nA2\tTMA1-A2\t300\t100\t50\n")
    sheet = pd.DataFrame({"sample": ["s1", "tma", "s2"], "patient": ["P1", "TMA1", "P1"],
                          "cores": ["", str(path), ""]})
    core_patients = sheet_core_patients(sheet)
    assert core_patients == {"tma": ["TMA1-A1", "TMA1-A2"]}
    assert cohort_patients(sheet, core_patients) == ["P1", "TMA1-A1", "TMA1-A2"]


def write_table(path, sample, xy, values, obsm=True):
    ids = [f"{sample}_{i}" for i in range(len(xy))]
    obs = pd.DataFrame({"cell_id": ids, "sample": sample, "x_px": xy[:, 0], "y_px": xy[:, 1]},
                       index=ids)
    if obsm:
        table = ad.AnnData(np.zeros((len(xy), 0), np.float32), obs=obs,
                           obsm={"X_image": values.astype(np.float32)})
    else:
        table = ad.AnnData(values.astype(np.float32), obs=obs,
                           var=pd.DataFrame(index=[f"G{i}" for i in range(values.shape[1])]))
    table.write_h5ad(path)
    return path


def test_survival_pools_a_tma_slide_by_core_patient(tmp_path):
    """Cells pool by the patient of their core, cells outside every core count for nobody,
    and a TMA's H-scores are its cores'."""
    path = core_map(tmp_path, "A1\tT-A1\t100\t100\t50\nA2\tT-A2\t300\t100\t50\n")
    patients = CellPatients({"tma": "T", "s1": "P1"}, parse_core_map_args([f"tma={path}"]))
    xy = np.array([[100, 100], [110, 90], [300, 100], [200, 300]], float)
    emb = write_table(tmp_path / "tma.h5ad", "tma", xy, np.array([[1, 0], [3, 0], [0, 5], [9, 9]]))
    other = write_table(tmp_path / "s1.h5ad", "s1", xy[:2], np.array([[7, 7], [7, 7]]))
    cells = read_cell_embeddings([emb, other], patients)
    assert sorted(cells) == ["P1", "T-A1", "T-A2"]
    assert cells["T-A1"].mean(axis=0).tolist() == [2.0, 0.0]
    assert cells["T-A2"].tolist() == [[0.0, 5.0]]

    hscores = tmp_path / "hscores.tsv"
    pd.DataFrame({"sample": ["tma"] * 4 + ["s1"], "marker": "CD3",
                  "region": ["slide", "A1", "A2", "r1c1", "slide"],
                  "source": "predicted", "cells": "all",
                  "hscore": [50.0, 10.0, 90.0, 70.0, 30.0]}).to_csv(hscores, sep="\t", index=False)
    h = hscore_features([hscores], patients)["molecular_hscore_CD3"]
    assert h.to_dict() == {"P1": 30.0, "T-A1": 10.0, "T-A2": 90.0}


def test_pathway_features_of_a_tma_are_per_core(tmp_path):
    from pastflow.models.pathways import GeneSet

    path = core_map(tmp_path, "A1\tT-A1\t100\t100\t50\nA2\tT-A2\t300\t100\t50\n")
    patients = CellPatients({"tma": "T"}, parse_core_map_args([f"tma={path}"]))
    xy = np.array([[100, 100], [300, 100], [310, 100], [200, 300]], float)
    x = np.array([[3, 3, 3, 0, 0, 0], [0, 0, 0, 3, 3, 3], [0, 0, 0, 3, 3, 3], [9] * 6], float)
    table = write_table(tmp_path / "tma.h5ad", "tma", xy, x, obsm=False)
    sets = [GeneSet("UP", "", ("G0", "G1", "G2")), GeneSet("DOWN", "", ("G3", "G4", "G5"))]
    scores = pathway_features([table], patients, sets)
    assert scores.loc["T-A1", "molecular_UP"] > scores.loc["T-A2", "molecular_UP"]
    assert scores.loc["T-A2", "molecular_DOWN"] > scores.loc["T-A1", "molecular_DOWN"]
