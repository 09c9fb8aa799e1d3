"""Start-up checks across config, sheet and data (pastflow.preflight, pastflow.gene_names).

Each sample's gene list is written in its vendor's real format (a 10x feature-barcode HDF5, a
``features.tsv.gz``, Xenium's ``gene_panel.json``, an AnnData ``.h5ad``, a legacy ST counts
table); the checks read the lists only.
"""

from __future__ import annotations

import gzip
import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pastflow.config import resolve_workflow_config
from pastflow.errors import InputError
from pastflow.gene_names import sample_genes
from pastflow.preflight import check_run, read_notes, stage_notes, write_notes
from pastflow.simulate.tenx import write_feature_barcode_h5

GENES = ["EPCAM", "COL1A1", "CD3D", "MS4A1", "CD68", "PECAM1", "MKI67", "KRT8"]


def tenx_outs(folder, genes, *, probes=("NegControlProbe_1",), name="filtered_feature_bc_matrix.h5"):
    """A 10x folder whose matrix lists ``genes`` and control probes (not genes)."""
    folder.mkdir(parents=True, exist_ok=True)
    features = list(genes) + list(probes)
    write_feature_barcode_h5(folder / name, sparse.csr_matrix((2, len(features)), dtype=np.int32),
                             ["b1", "b2"], features,
                             feature_types=["Gene Expression"] * len(genes)
                             + ["Negative Control Probe"] * len(probes))
    return folder


def legacy_counts(path, genes):
    """A legacy ST counts table: spots x genes, spot ids in the first column."""
    pd.DataFrame(np.ones((2, len(genes))), index=["1x1", "1x2"], columns=genes).to_csv(
        path, sep="\t")
    return path


def sheet(rows):
    """The checked sheet as pastflow.sheet returns it: indexed by sample."""
    return pd.DataFrame(rows, columns=["sample", "patient", "technology", "data", "split"]
                        ).set_index("sample", drop=False)


def panel_file(path, markers):
    import yaml

    path.write_text(yaml.safe_dump({"markers": markers}))
    return path


def run_checks(samples, config=None, *, simulated=False, run_survival=False):
    settings = resolve_workflow_config(config or {})
    model = [s for s in samples.index if samples.loc[s, "split"] != "test"
             and samples.loc[s, "technology"] != "he_only"]
    return check_run(settings, samples, simulated=simulated, model_samples=model,
                     run_survival=run_survival)


def test_gene_lists_are_read_from_each_vendor_format(tmp_path):
    xenium = tenx_outs(tmp_path / "xenium", GENES[:3], name="cell_feature_matrix.h5")
    assert sample_genes("xenium", xenium) == set(GENES[:3])  # control probes are not genes
    hd = tenx_outs(tmp_path / "hd" / "binned_outputs" / "square_008um", GENES[:2])
    assert sample_genes("visium_hd", tmp_path / "hd") == set(GENES[:2])
    panel = tmp_path / "panel_only"
    panel.mkdir()
    (panel / "gene_panel.json").write_text(json.dumps({"payload": {"targets": [
        {"type": {"data": {"id": "ENSG1", "name": "EPCAM"}}},
        {"type": {"data": {"id": "ENSG2", "name": "CD68"}}}]}}))
    assert sample_genes("xenium", panel) == {"EPCAM", "CD68"}
    table = tmp_path / "mex" / "filtered_feature_bc_matrix"
    table.mkdir(parents=True)
    with gzip.open(table / "features.tsv.gz", "wt") as f:
        f.write("ENSG1\tEPCAM\tGene Expression\nNEG1\tNeg1\tNegative Control Probe\n")
    assert sample_genes("visium", tmp_path / "mex") == {"EPCAM"}
    h5ad = tmp_path / "s.h5ad"
    ad.AnnData(np.zeros((2, 3), np.float32), var=pd.DataFrame(index=GENES[3:6])).write_h5ad(h5ad)
    assert sample_genes("hest", h5ad) == set(GENES[3:6])
    counts = legacy_counts(tmp_path / "S.tsv", GENES[:4])
    assert sample_genes("legacy_st", counts) == set(GENES[:4])
    # Nothing cheap to read: not checked up-front (the stage reads the genes itself).
    assert sample_genes("he_only", "") is None
    assert sample_genes("xenium", tmp_path / "empty") is None


def test_a_misspelt_panel_gene_stops_the_run_unless_the_marker_is_optional(tmp_path):
    data = tenx_outs(tmp_path / "s1", GENES)
    samples = sheet([["s1", "P1", "visium", str(data), "train"]])
    panel = panel_file(tmp_path / "panel.yaml", {
        "Ki67": {"genes": ["MKI76"], "compartment": "nuclear"},  # MKI67 misspelt
        "pan-cytokeratin": {"genes": ["KRT8"]}, "CD3": {"genes": ["CD3D"]}})
    config = {"stain": {"panel": str(panel), "images": ["CD3"]}}
    with pytest.raises(InputError) as err:
        run_checks(samples, config)
    assert err.value.path == str(panel)
    assert ("marker 'Ki67': gene(s) 'MKI76' measured in none of the 1 sample(s) whose gene "
            "lists were read ('s1'); fix the symbol, or mark the marker `optional: true`"
            ) in str(err.value)

    panel_file(panel, {"Ki67": {"genes": ["MKI76"], "optional": True},
                       "CD3": {"genes": ["CD3D"]}})
    assert run_checks(samples, config) == [
        "survival skipped (1 patients, survival.min_patients=20, clinical table: none)"]
    # ...but an optional marker drawn as an image would be blank: refused, naming the key.
    with pytest.raises(InputError, match="config key 'stain.images': marker 'Ki67' would be a "
                                         "blank image: none of its genes \\('MKI76'\\)"):
        run_checks(samples, {"stain": {"panel": str(panel), "images": ["Ki67"]}})
    with pytest.raises(InputError, match="config key 'stain.images': 'Ki-67' is not a marker of "
                                         "the panel"):
        run_checks(samples, {"stain": {"panel": str(panel), "images": ["Ki-67"]}})


def test_a_gene_measured_by_one_sample_of_the_cohort_is_enough(tmp_path):
    """Panels differ between samples (a Xenium panel beside a whole transcriptome): with the
    union gene panel a gene of one sample is predicted for all."""
    samples = sheet([["x1", "P1", "xenium", str(tenx_outs(tmp_path / "x1", ["CD3D"])), "train"],
                     ["v1", "P2", "legacy_st", str(legacy_counts(tmp_path / "v1.tsv", ["MKI67"])),
                      "train"]])
    panel = panel_file(tmp_path / "panel.yaml", {"Ki67": {"genes": ["MKI67"]},
                                                 "CD3": {"genes": ["CD3D"]}})
    run_checks(samples, {"stain": {"panel": str(panel), "images": ["Ki67", "CD3"]},
                         "evaluate": {"markers": ["CD3D", "MKI67"]}})


def test_evaluate_markers_the_user_names_are_checked(tmp_path):
    samples = sheet([["s1", "P1", "visium", str(tenx_outs(tmp_path / "s1", GENES)), "train"]])
    with pytest.raises(InputError, match="config key 'evaluate.markers': gene\\(s\\) 'ERBB3' "
                                         "measured in none of the 1 sample"):
        run_checks(samples, {"evaluate": {"markers": ["EPCAM", "ERBB3"]}})
    # The shipped default list is generic: its genes are not required of every dataset.
    lacking = [g for g in GENES if g != "PECAM1"]  # a default marker
    samples = sheet([["s1", "P1", "visium", str(tenx_outs(tmp_path / "s2", lacking)), "train"]])
    run_checks(samples)


def test_a_simulated_run_is_checked_against_the_simulator_panel_without_its_files(tmp_path):
    samples = sheet([["sim01", "P1", "xenium", str(tmp_path / "not_yet"), "train"]])
    run_checks(samples, {"simulate": {"enabled": True}}, simulated=True)  # the default panel
    panel = panel_file(tmp_path / "panel.yaml", {"CD3": {"genes": ["CD3D", "CD3Q"]}})
    with pytest.raises(InputError, match="marker 'CD3': gene\\(s\\) 'CD3Q' measured in none"):
        run_checks(samples, {"simulate": {"enabled": True},
                             "stain": {"panel": str(panel), "images": ["CD3"]}}, simulated=True)


def test_the_clinical_table_is_checked_against_the_sheet_at_start_up(tmp_path):
    samples = sheet([[f"s{i}", f"P{i}", "he_only", "", "train"] for i in range(3)]
                    + [["x", "PX", "visium", str(tenx_outs(tmp_path / "x", GENES)), "train"]])
    clinical = tmp_path / "clinical.tsv"
    config = {"survival": {"clinical": str(clinical), "min_patients": 4}}

    def refused(rows):
        clinical.write_text("patient\tos_time\tos_event\n" + "".join(rows))
        with pytest.raises(InputError) as err:
            run_checks(samples, config, run_survival=True)
        assert err.value.path == str(clinical)
        return str(err.value)

    rows = [f"P{i}\t{10 + i}\t0\n" for i in range(3)] + ["PX\t5\t0\n"]
    assert "column 'os_event': no event among the 4 patients of the sample sheet" in refused(rows)
    rows = [f"P{i}\t0\t1\n" for i in range(3)] + ["PX\t0\t0\n"]
    assert ("column 'os_time': every one of the 4 patients of the sample sheet has the survival "
            "time 0") in refused(rows)
    rows = [f"P{i}\t{10 + i}\t1\n" for i in range(3)]
    assert "1 of the 4 patients of the sample sheet are not in the clinical table: 'PX'" in \
        refused(rows)
    clinical.write_text("patient\tos_time\tos_event\n"
                        + "".join(f"P{i}\t{10 + i}\t{i % 2}\n" for i in range(3)) + "PX\t3\t1\n")
    assert run_checks(samples, config, run_survival=True) == []


def test_a_sheet_without_training_samples_says_the_model_stages_are_skipped(tmp_path):
    samples = sheet([["s1", "P1", "visium", "", "test"], ["s2", "P2", "he_only", "", "train"]])
    notes = run_checks(samples)
    assert notes == ["no training samples (split train, with expression): model stages "
                     "skipped (pretrain, embed, predict, evaluate, stain, survival)"]
    write_notes(notes, tmp_path / "notes.json")
    assert read_notes(tmp_path / "notes.json") == notes
    settings = resolve_workflow_config({})
    assert stage_notes(settings, list(samples["patient"]), simulated=True, model_samples=["s1"],
                       run_survival=True) == []


def test_the_checks_of_a_40_sample_sheet_take_under_two_seconds(tmp_path):
    """Snakemake runs them at every start (0.3 s measured on 2 busy cores)."""
    samples = sheet([[f"s{i:02d}", f"P{i:02d}", "visium",
                      str(tenx_outs(tmp_path / f"s{i:02d}", GENES + [f"G{j}" for j in range(2000)])),
                      "train"] for i in range(40)])
    start = time.perf_counter()
    run_checks(samples)
    assert time.perf_counter() - start < 2.0
