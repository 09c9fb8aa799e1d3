"""The simulated tissue microarray: round cores of different patients on one Xenium slide,
read back through the real ingest reader and checked against each core's patient."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from pastflow.contracts import TABLE_KEY
from pastflow.errors import InputError
from pastflow.simulate.clinical import clinical_tables, patient_parameters
from pastflow.simulate.settings import SimulateSettings
from pastflow.simulate.tma import (CORES_COLUMNS, core_ids, core_patient, simulated_core_patients)

BLOCK = "TMA9"
N_CORES = 6
CELLS_PER_CORE = 60


def _cli(argv: list[str]):
    from pastflow.simulate import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["simulate", "sample", *argv, "--no-progress"])
    return args.func(args)


@pytest.fixture(scope="module")
def tma(tmp_path_factory) -> Path:
    """A 6-core TMA of 60 cells per core, through the command line (n_cells from the settings)."""
    out = tmp_path_factory.mktemp("tma")
    settings = out / "config.yaml"
    settings.write_text(yaml.safe_dump({"simulate": {"n_cells": {"tma*": CELLS_PER_CORE}}}))
    _cli(["--out", str(out), "--sample", "tma_small", "--patient", BLOCK, "--technology", "xenium",
          "--cores", str(N_CORES), "--settings", str(settings)])
    return out / "tma_small"


def test_cores_are_named_as_on_a_tma_map():
    ids = core_ids(40)
    assert ids[:9] == ["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "B1"]
    assert ids[-1] == "E8" and len(set(ids)) == 40
    assert core_ids(27 * 8)[-1] == "AA8"
    assert core_patient("TMA1", "A1") == "TMA1-A1"
    sheet = pd.DataFrame({"sample": ["cohort1", "tma1"], "patient": ["P1", "TMA1"],
                          "cores": ["", "tma1/cores.tsv"]})
    assert simulated_core_patients(sheet, SimulateSettings()) == {
        "tma1": [core_patient("TMA1", c) for c in core_ids(40)]}
    # The sheet's core map and the simulator's cores must agree: else one is never used.
    for cores in (["", ""], ["x.tsv", "tma1/cores.tsv"]):
        with pytest.raises(InputError, match="sample '(tma1|cohort1)'.*make them agree"):
            simulated_core_patients(sheet.assign(cores=cores), SimulateSettings())


def test_tma_cores_follow_sample_patterns_like_n_cells():
    settings = SimulateSettings()
    assert settings.cores_for("tma1") == 40 and settings.cores_for("cohort3") == 0
    assert SimulateSettings(tma_cores=5).cores_for("anything") == 5
    with pytest.raises(InputError, match="simulate.tma_cores"):
        SimulateSettings(tma_cores={"tma*": 3}).cores_for("cohort1")
    with pytest.raises(InputError, match="tma_cores"):
        SimulateSettings.from_config({"tma_cores": {}}, "simulate")


def test_cores_tsv_gives_separate_discs_holding_their_cells(tma):
    cores = pd.read_csv(tma / "cores.tsv", sep="\t")
    assert tuple(cores.columns) == CORES_COLUMNS
    assert cores["core"].tolist() == core_ids(N_CORES)
    assert cores["patient"].tolist() == [core_patient(BLOCK, c) for c in core_ids(N_CORES)]
    truth = pd.read_parquet(tma / "truth/cells.parquet")
    assert len(truth) == N_CORES * CELLS_PER_CORE and truth["cell_id"].is_unique
    assert (truth.groupby("core").size() == CELLS_PER_CORE).all()
    disc = cores.set_index("core").loc[truth["core"]]
    assert (truth["patient"].to_numpy() == disc["patient"].to_numpy()).all()
    dist = np.hypot(truth["x_px"].to_numpy() - disc["x_px"].to_numpy(),
                    truth["y_px"].to_numpy() - disc["y_px"].to_numpy())
    assert (dist <= disc["radius_px"].to_numpy() + 1e-3).all()
    # Glass between every two discs: at least 15% of the larger diameter.
    xy, r = cores[["x_px", "y_px"]].to_numpy(), cores["radius_px"].to_numpy()
    for i in range(N_CORES):
        for j in range(i + 1, N_CORES):
            gap = np.hypot(*(xy[i] - xy[j])) - r[i] - r[j]
            assert gap >= 0.15 * 2 * max(r[i], r[j]), (i, j, gap)
    # Every disc lies on the H&E.
    with tifffile.TiffFile(tma / "xenium/he.ome.tif") as tif:
        height, width = tif.series[0].levels[0].shape[:2]
    assert ((xy - r[:, None]) > 0).all() and (xy[:, 0] + r < width).all() and (xy[:, 1] + r < height).all()


def test_one_field_grid_holds_every_core_as_laid_out():
    from pastflow.simulate.tma import lay_out_tma

    tma = lay_out_tma("tma_small", BLOCK, N_CORES, CELLS_PER_CORE)
    cells = tma.slide.cells
    # The slide's fields (what the H&E is rendered from) put each cell on its own domain.
    domain = tma.slide.fields.domain_at(cells["x_um"].to_numpy(), cells["y_um"].to_numpy())
    assert (domain == cells["domain"].cat.codes.to_numpy()).all()
    # Cell kinds index the stacked per-core expression profiles.
    core_of = cells["core"].map({c: i for i, c in enumerate(tma.cores["core"])}).to_numpy()
    assert (cells["kind"].to_numpy() // 7 == core_of).all()
    assert tma.slide.expression.profiles.shape == (N_CORES * 7, 300)


def test_truth_records_each_core_with_its_patient(tma):
    meta = json.loads((tma / "truth/sample.json").read_text())
    assert meta["patient"] == BLOCK and meta["technology"] == "xenium"
    assert meta["n_cells"] == N_CORES * CELLS_PER_CORE and "patient_parameters" not in meta
    patients = [core_patient(BLOCK, c) for c in core_ids(N_CORES)]
    assert [c["patient"] for c in meta["cores"]] == patients
    # The clinical table of those patients carries the cores' hazards.
    _, hazard = clinical_tables(patients, meta["cohort_seed"])
    assert [c["patient_parameters"]["log_hazard"] for c in meta["cores"]] == pytest.approx(
        hazard["log_hazard"].tolist())
    programs = pd.read_csv(tma / "truth/programs.tsv", sep="\t", index_col=[0, 1])
    assert programs.shape == (N_CORES * 7, 300)
    assert programs.index.get_level_values("core").unique().tolist() == core_ids(N_CORES)


def test_cores_differ_as_their_patients_say(tma):
    truth = pd.read_parquet(tma / "truth/cells.parquet")
    params = {c: patient_parameters(core_patient(BLOCK, c)) for c in core_ids(N_CORES)}
    nest = truth.groupby("core")["domain"].apply(lambda d: (d == "tumour").mean())
    wanted = pd.Series({c: p.tumour_fraction for c, p in params.items()})
    assert nest.corr(wanted[nest.index], method="spearman") > 0.7
    # ER+ cores (and only they) give their tumour cells the oestrogen programme.
    programs = pd.read_csv(tma / "truth/programs.tsv", sep="\t", index_col=[0, 1])
    esr1 = programs.xs("tumour", level="cell_type")["ESR1"]
    er = pd.Series({c: p.er_positive for c, p in params.items()})
    assert er.any() and not er.all(), "pick a block with ER+ and ER- cores"
    assert esr1[er].min() > 5 * esr1[~er].max()


def test_tma_bundle_reads_back_through_ingest(tma, tmp_path):
    from pastflow.ingest.sample import ingest_sample

    sheet = json.loads((tma / "truth/sample.json").read_text())["sheet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = ingest_sample("tma_small", BLOCK, "xenium", tmp_path / "tma.zarr", progress=False,
                             **{k: str(tma / v) for k, v in sheet.items()})
    table = ad.read_zarr(path / "tables" / TABLE_KEY)
    truth = pd.read_parquet(tma / "truth/cells.parquet").set_index("cell_id")
    assert sorted(table.obs["cell_id"]) == sorted(truth.index)
    truth = truth.loc[table.obs["cell_id"]]
    err = np.hypot(table.obs["x_px"].to_numpy() - truth["x_px"].to_numpy(),
                   table.obs["y_px"].to_numpy() - truth["y_px"].to_numpy())
    assert err.max() < 2.0


def test_a_tma_is_simulated_as_xenium_only(tmp_path):
    with pytest.raises(InputError, match="xenium only"):
        _cli(["--out", str(tmp_path), "--sample", "tma1", "--patient", BLOCK,
              "--technology", "visium", "--cores", "4"])
    assert list(tmp_path.iterdir()) == []
