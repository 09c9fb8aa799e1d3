"""HEST-1k samples (technology ``hest``) and the cohort builder (``pastflow cohort hest``).

Reader: a simulated HEST-layout sample of each ``st_technology`` (pastflow.simulate.hest) is
read back with the simulator's units, positions and counts; Xenium as cells from
``xenium_seg/`` + ``transcripts/`` (control, low-quality and unassigned transcripts left
out), else as HEST's pseudo-spots; a downsampled WSI; bad inputs; and each technology
through ingest -> qc -> patches -> embed -> predict with a tiny pretrained model.

Cohort builder: on the real HEST_v1_1_0.csv (../shared/data/hest; skipped when absent):
query counts, every technology's count, patient-level splits, seeds, the missing-file
message; and on a simulated HEST root, a sheet whose rows ingest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pastflow.cli import main
from pastflow.cohort.hest import build_hest_sheet, patient_ids, read_metadata_table
from pastflow.cohort.splits import assign_splits
from pastflow.errors import InputError
from pastflow.hest_layout import LEGACY_ST, ST_TECHNOLOGIES, VISIUM, VISIUM_HD, XENIUM, HestPaths
from pastflow.ingest.he_only import GIVEN_MPP
from pastflow.ingest.hest import hest_mpp, read_hest
from pastflow.ingest.settings import HestSettings
from pastflow.patches.reader import PatchStore
from pastflow.simulate.hest import simulate_hest_sample
from test_embed import trained  # noqa: F401 (fixture)
from test_models_fixtures import cohort  # noqa: F401 (fixture)

MPP = 0.5  # the simulated WSIs and the tiny model's patches
IDS = {VISIUM: "TENX01", LEGACY_ST: "SPA01", VISIUM_HD: "TENX02", XENIUM: "TENX03"}


@pytest.fixture(scope="module")
def hest(tmp_path_factory):
    """``{st_technology: HestSample}``: one small sample of each, under one HEST root."""
    root = tmp_path_factory.mktemp("hest_data")
    return {tech: simulate_hest_sample(root, IDS[tech], f"P{i}", tech, seed=i, mpp=MPP,
                                       size_um=800.0 if tech == LEGACY_ST else 600.0)
            for i, tech in enumerate(ST_TECHNOLOGIES)}


def copy_sample(sample, root: Path) -> HestPaths:
    """The sample's files (every folder of the layout) copied under another root."""
    for path in sample.paths.root.rglob(f"{sample.paths.sample_id}[._]*"):
        target = root / path.relative_to(sample.paths.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return HestPaths(root, sample.paths.sample_id)


def as_truth_order(parts, truth):
    """``(positions, dense counts)`` of the truth's units in the reader's row and gene order."""
    row = pd.Index(truth.ids).get_indexer(np.asarray(parts.cell_ids))
    col = pd.Index(truth.genes).get_indexer(parts.var.index)
    assert (row >= 0).all() and (col >= 0).all()
    return truth.xy_px[row], truth.counts[row][:, col].toarray()


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


# ----------------------------------------------------------------------------- reader


@pytest.mark.parametrize("technology,unit,diameter", [
    (VISIUM, "spot", 55.0), (LEGACY_ST, "spot", 100.0),
    (VISIUM_HD, "spot", 128.0),  # the metadata says 2 um (the barcode square): not used
    (XENIUM, "cell", None)])
def test_each_technology_reads_its_units_where_the_simulator_put_them(hest, technology, unit,
                                                                      diameter):
    sample = hest[technology]
    parts = read_hest(sample.paths.st, sample.paths.wsi, progress=False)
    truth = sample.cells if unit == "cell" else sample.spots
    assert parts.unit == unit and len(parts.cell_ids) == len(truth.ids) > 8
    assert parts.unit_diameter_um == pytest.approx(diameter or truth.diameter_um, rel=1e-9)
    xy, counts = as_truth_order(parts, truth)
    assert parts.xy_px == pytest.approx(xy, abs=1e-6)  # full-res px = WSI px (identity)
    assert np.array_equal(dense(parts.counts), counts)
    assert parts.mpp == MPP and parts.uns["mpp_source"] == "image metadata"
    assert parts.uns["st_technology"] == technology and parts.vendor_space == "fullres_pixels"
    if unit == "cell":
        # Every counted transcript of the truth; the extras of each kind left out.
        assert parts.uns["transcripts"]["counted"] == int(truth.counts.sum())
        assert min(parts.uns["transcripts"][k] for k in ("low_qv", "control", "unassigned")) > 100
        assert np.median(parts.radius_um) * 2 == pytest.approx(truth.diameter_um)


def test_xenium_without_cells_or_with_cells_off_reads_hests_pseudo_spots(hest, tmp_path, caplog):
    paths = copy_sample(hest[XENIUM], tmp_path)
    spots = hest[XENIUM].spots
    parts = read_hest(paths.st, paths.wsi, settings=HestSettings(xenium_cells=False),
                      progress=False)
    assert parts.unit == "spot" and "cells_unavailable" not in parts.uns
    assert parts.unit_diameter_um == pytest.approx(100.0)  # HEST pools 100 um squares
    xy, counts = as_truth_order(parts, spots)
    assert parts.xy_px == pytest.approx(xy) and np.array_equal(dense(parts.counts), counts)
    paths.transcripts.unlink()
    with caplog.at_level(logging.WARNING, logger="pastflow.ingest.hest"):
        parts = read_hest(paths.st, paths.wsi, progress=False)
    assert parts.unit == "spot" and len(parts.cell_ids) == len(spots.ids)
    assert parts.uns["cells_unavailable"] == [str(paths.transcripts)]
    assert "cells were not available" in caplog.text and "_transcripts.parquet" in caplog.text


def test_min_qv_decides_which_transcripts_count(hest):
    sample = hest[XENIUM]
    default = read_hest(sample.paths.st, sample.paths.wsi, progress=False)
    every = read_hest(sample.paths.st, sample.paths.wsi, settings=HestSettings(min_qv=0),
                      progress=False)
    tallies = default.uns["transcripts"]
    assert every.uns["transcripts"]["low_qv"] == 0
    assert every.uns["transcripts"]["counted"] == tallies["counted"] + tallies["low_qv"]
    assert dense(every.counts).sum() == dense(default.counts).sum() + tallies["low_qv"]


def test_a_spot_diameter_missing_from_the_metadata_falls_back_to_the_nominal_spot(hest, tmp_path,
                                                                                   caplog):
    paths = copy_sample(hest[LEGACY_ST], tmp_path)
    meta = json.loads(paths.metadata.read_text())
    meta["spot_diameter"] = float("nan")  # HEST writes NaN for what it does not know
    paths.metadata.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="pastflow.ingest.hest"):
        parts = read_hest(paths.st, paths.wsi, progress=False)
    assert parts.unit_diameter_um == 100.0
    assert parts.uns["unit_diameter_source"].startswith("nominal Spatial Transcriptomics spot")
    assert "no spot_diameter" in caplog.text
    assert parts.uns["spot_pitch_um"] == pytest.approx(200.0)  # measured on the grid


def test_a_downsampled_wsi_scales_the_full_resolution_positions(hest, tmp_path):
    """Positions in full-res px of a 2x larger original; the TIFF says its own resolution."""
    paths = copy_sample(hest[VISIUM], tmp_path)
    table = ad.read_h5ad(paths.st)
    table.obsm["spatial"] = table.obsm["spatial"] * 2
    table.write_h5ad(paths.st)
    meta = json.loads(paths.metadata.read_text())
    meta.update(fullres_px_width=meta["fullres_px_width"] * 2,
                fullres_px_height=meta["fullres_px_height"] * 2,
                pixel_size_um_estimated=MPP / 2)
    paths.metadata.write_text(json.dumps(meta))
    parts = read_hest(paths.st, paths.wsi, progress=False)
    xy, _ = as_truth_order(parts, hest[VISIUM].spots)
    assert parts.uns["image_scale"] == pytest.approx(0.5, rel=1e-3)
    assert parts.xy_px == pytest.approx(xy, abs=1.0)  # the widths are rounded to whole pixels
    assert parts.mpp == MPP and parts.unit_diameter_um == 55.0
    assert parts.uns["spot_pitch_um"] == pytest.approx(100.0, rel=0.01)


def test_resolution_comes_from_the_tiff_then_the_metadata_then_the_sheet(tmp_path):
    image, metadata = tmp_path / "S.tif", tmp_path / "S.json"
    meta = {"pixel_size_um_estimated": 0.2738}
    assert hest_mpp(meta, 0.25, 1.0, None, image, metadata) == (0.25, "image metadata")
    assert hest_mpp(meta, None, 1.0, 0.9, image, metadata) == (
        pytest.approx(0.2738), "S.json pixel_size_um_estimated")
    assert hest_mpp(meta, None, 0.5, None, image, metadata)[0] == pytest.approx(0.5476)
    assert hest_mpp({}, None, 1.0, 0.9, image, metadata) == (0.9, GIVEN_MPP)
    with pytest.raises(InputError, match="no microns-per-pixel"):
        hest_mpp({"pixel_size_um_estimated": float("nan")}, None, 1.0, None, image, metadata)


def _ingest(paths: HestPaths, out: Path, capsys) -> tuple[int, str]:
    code = main(["ingest", "--sample", paths.sample_id, "--patient", "P", "--technology", "hest",
                 "--data", str(paths.st), "--image", str(paths.wsi), "--no-progress",
                 "--out", str(out)])
    return code, capsys.readouterr().err.strip()


def test_bad_samples_are_refused_with_one_line_naming_the_file(hest, tmp_path, capsys):
    paths = copy_sample(hest[VISIUM], tmp_path / "hest")
    out = tmp_path / "out" / "s.zarr"
    out.parent.mkdir()
    meta = paths.metadata.read_bytes()
    paths.metadata.unlink()
    code, err = _ingest(paths, out, capsys)
    assert code == 2 and err == (f"pastflow ingest: error: {paths.metadata}: HEST metadata not "
                                 "found: a HEST sample needs metadata/<id>.json beside st/ "
                                 "(download it with the sample)")
    paths.metadata.write_bytes(meta)
    paths.wsi.rename(paths.wsi.with_suffix(".old"))
    code, err = _ingest(paths, out, capsys)
    assert code == 2 and err == f"pastflow ingest: error: {paths.wsi}: image not found"
    paths.wsi.with_suffix(".old").rename(paths.wsi)
    table = ad.read_h5ad(paths.st)
    del table.obsm["spatial"]
    table.write_h5ad(paths.st)
    code, err = _ingest(paths, out, capsys)
    assert code == 2 and err == (f"pastflow ingest: error: {paths.st}: no obsm['spatial'] (spot "
                                 "centres in full-resolution pixels): not a HEST st/ table")
    assert "\n" not in err and not any(out.parent.iterdir())  # nothing left behind


@pytest.mark.parametrize("technology", ST_TECHNOLOGIES)
def test_each_technology_runs_through_predict(hest, technology, trained, tmp_path, capsys):  # noqa: F811
    """ingest -> qc -> patches -> embed -> predict, the commands the workflow's rules run."""
    sample, out = hest[technology], tmp_path
    settings = out / "config.yaml"
    settings.write_text("qc:\n  min_counts: 5\n  min_genes: 3\n  min_cells: 1\n"
                        "  n_top_genes: 10\npatches:\n  mpp: 0.5\n  workers: 1\n")
    steps = [
        ["ingest", "--sample", "h1", "--patient", "P", "--technology", "hest", "--data",
         str(sample.paths.st), "--image", str(sample.paths.wsi), "--settings", str(settings),
         "--no-progress", "--out", str(out / "h1.zarr")],
        ["qc", "--ingested", str(out / "h1.zarr"), "--settings", str(settings), "--out",
         str(out / "qc.h5ad"), "--fig-distributions", str(out / "d.png"), "--fig-spatial",
         str(out / "s.png")],
        ["patches", "--ingested", str(out / "h1.zarr"), "--settings", str(settings), "--out",
         str(out / "h1.h5"), "--no-progress"],
        ["embed", "--model", str(trained / "model"), "--store", str(out / "h1.h5"), "--table",
         str(out / "qc.h5ad"), "--sample", "h1", "--split", "test", "--out",
         str(out / "embed.h5ad"), "--no-progress"],
        ["predict", "--model", str(trained / "model"), "--embedding", str(out / "embed.h5ad"),
         "--table", str(out / "qc.h5ad"), "--split", "test", "--out", str(out / "predict.h5ad")],
    ]
    for step in steps:
        assert main(step) == 0, capsys.readouterr().err
    ingested = ad.read_zarr(out / "h1.zarr" / "tables" / "table")
    unit = ingested.uns["pastflow"]["unit"]
    assert unit == ("cell" if technology == XENIUM else "spot")
    assert ingested.uns["pastflow"]["technology"] == "hest"
    store = PatchStore(out / "h1.h5")
    patch_um = 32.0 if unit == "cell" else ingested.uns["pastflow"]["unit_diameter_um"] + 10.0
    assert store.unit == unit and store.patch_px == round(patch_um / MPP)  # spot + context
    qc = ad.read_h5ad(out / "qc.h5ad")
    prediction = ad.read_h5ad(out / "predict.h5ad")
    assert 8 < qc.n_obs <= ingested.n_obs
    assert set(prediction.obs["cell_id"]) == set(ingested.obs["cell_id"])  # every unit's H&E
    assert np.isfinite(prediction.X).all() and prediction.X.std(axis=0).max() > 0


# ----------------------------------------------------------------------------- splits


def test_splits_keep_patients_whole_fill_every_set_and_follow_the_fractions():
    sizes = {f"p{i}": 1 + i % 4 for i in range(40)}  # 100 samples
    splits = assign_splits(sizes, (0.6, 0.2, 0.2), seed=1)
    samples = pd.Series(sizes).groupby(pd.Series(splits)).sum()
    assert samples.to_dict() == pytest.approx({"train": 60, "val": 20, "test": 20}, abs=2)
    assert splits == assign_splits(sizes, (0.6, 0.2, 0.2), seed=1)
    assert splits != assign_splits(sizes, (0.6, 0.2, 0.2), seed=2)
    # As many patients as sets: each set gets one, whatever the fractions.
    assert sorted(assign_splits({"a": 5, "b": 1, "c": 1}, (0.9, 0.05, 0.05)).values()) == \
        ["test", "train", "val"]
    assert set(assign_splits({"a": 1, "b": 1}, (0.6, 0.2, 0.2)).values()) == {"train", "test"}
    assert assign_splits({"a": 3}, (0.6, 0.2, 0.2)) == {"a": "train"}
    assert "val" not in assign_splits(sizes, (0.8, 0.0, 0.2)).values()
    for bad in ((0.5, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)):
        with pytest.raises(ValueError, match="summing to 1"):
            assign_splits(sizes, bad)


# ----------------------------------------------------------------------------- real metadata


@pytest.fixture(scope="module")
def hest_csv(shared_data) -> Path:
    path = shared_data / "hest" / "HEST_v1_1_0.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def hest_table(hest_csv) -> pd.DataFrame:
    return pd.read_csv(hest_csv, encoding="utf-8-sig")


def test_the_metadata_table_is_read_whole(hest_csv, hest_table):
    table = read_metadata_table(hest_csv)
    assert len(table) == 1229 and table.columns[0] == "dataset_title"  # the BOM is not a name
    assert table["id"].is_unique and table["id"].tolist() == hest_table["id"].tolist()


def test_human_breast_visium_query_selects_what_pandas_counts(hest_csv, hest_table, tmp_path):
    expected = hest_table[(hest_table["organ"] == "Breast") & (hest_table["st_technology"] == "Visium")
                          & (hest_table["species"] == "Homo sapiens")]
    sheet = build_hest_sheet(hest_csv, tmp_path / "hest", tmp_path / "breast.tsv",
                             where="organ == 'Breast' and st_technology == 'Visium' and "
                                   "species == 'Homo sapiens'", allow_missing=True)
    assert len(expected) == 8 and sheet["sample"].tolist() == expected["id"].tolist()
    assert set(sheet["technology"]) == {"hest"} and set(sheet["split"]) == {"train", "val", "test"}
    assert sheet["data"].tolist() == [f"st/{i}.h5ad" for i in expected["id"]]
    assert sheet["image"].tolist() == expected["image_filename"].map("wsis/{}".format).tolist()
    assert sheet["patient"].tolist() == sheet["sample"].tolist()  # none has a patient label


@pytest.mark.parametrize("technology,count", [("Visium", 602), ("Spatial Transcriptomics", 552),
                                              ("Visium HD", 10), ("Xenium", 65)])
def test_every_technology_count(hest_csv, hest_table, tmp_path, technology, count):
    sheet = build_hest_sheet(hest_csv, tmp_path, tmp_path / "t.tsv",
                             where=f"st_technology == '{technology}'", allow_missing=True)
    assert len(sheet) == (hest_table["st_technology"] == technology).sum() == count
    assert sheet.groupby("patient")["split"].nunique().max() == 1


def test_patients_are_whole_within_a_study_and_distinct_across_studies(hest_csv, hest_table,
                                                                       tmp_path):
    # One study (10x colorectal cancer): "Patient 1" on Visium HD, Visium and Xenium.
    ids = patient_ids(read_metadata_table(hest_csv)).set_axis(hest_table["id"])
    crc = ["TENX147", "TENX148", "TENX149", "TENX152", "TENX153", "TENX154", "TENX155", "TENX156"]
    assert ids[crc].nunique() == 1 and ids["TENX147"].startswith("patient1.")
    assert ids["NCBI603"] != ids["TENX147"]  # "Patient 1" of a bladder cancer study
    assert (ids[hest_table["patient"].fillna("").str.strip().eq("").to_numpy()]
            == hest_table["id"][hest_table["patient"].fillna("").str.strip().eq("")].to_numpy()).all()
    sheet = build_hest_sheet(hest_csv, tmp_path, tmp_path / "s.tsv", allow_missing=True,
                             where="organ == 'Breast' and st_technology == 'Spatial Transcriptomics'")
    per_patient = sheet.groupby("patient")["split"]
    assert per_patient.size().max() > 1 and per_patient.nunique().max() == 1
    shares = sheet["split"].value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.05)


def test_the_sheet_is_reproducible_from_its_seed(hest_csv, tmp_path):
    where = "st_technology == 'Xenium'"
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_hest_sheet(hest_csv, tmp_path, tmp_path / f"{name}.tsv", where=where, seed=seed,
                         allow_missing=True)
    a, b, c = ((tmp_path / f"{n}.tsv").read_text() for n in "abc")
    assert a == b and a != c
    assert "--seed 3 --fractions 0.6 0.2 0.2" in a and f"data_root: {tmp_path}" in a


def test_every_missing_file_is_listed_in_one_message(hest_csv, hest_table, tmp_path):
    where = "organ == 'Breast' and st_technology == 'Visium'"
    ids = hest_table.query(where)["id"].tolist()
    root = tmp_path / "hest"
    expected = []
    for k, sample in enumerate(ids):  # sample k has its first k % 4 files
        files = [HestPaths(root, sample).st, HestPaths(root, sample).wsi,
                 HestPaths(root, sample).metadata]
        for n, path in enumerate(files):
            if n < k % 4:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x")
            else:
                expected.append(str(path.relative_to(root)))
    out = tmp_path / "sheets" / "breast.tsv"
    with pytest.raises(InputError) as err:
        build_hest_sheet(hest_csv, root, out, where=where)
    head, *listed = str(err.value).split("\n")
    assert head.startswith(f"{root}: {len(expected)} file(s) of the {len(ids)} selected samples")
    assert [line.strip() for line in listed] == expected and len(expected) > 5
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bad_queries_and_fractions_are_refused(hest_csv, tmp_path, capsys):
    args = ["cohort", "hest", "--metadata", str(hest_csv), "--root", str(tmp_path), "--out",
            str(tmp_path / "s.tsv"), "--allow-missing"]
    assert main(args + ["--where", "organ == 'Breast' and stage > 2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pastflow cohort: error: ") and err.count("\n") == 1
    assert "--where \"organ == 'Breast' and stage > 2\" is not a query" in err
    assert "name 'stage' is not defined" in err and "st_technology, " in err
    assert main(args + ["--where", "organ == 'Atlantis'"]) == 2
    assert "--where \"organ == 'Atlantis'\" matches no sample" in capsys.readouterr().err
    assert main(args + ["--fractions", "0.5", "0.2", "0.2"]) == 2
    assert "--fractions: fractions [0.5, 0.2, 0.2] must be" in capsys.readouterr().err
    assert not (tmp_path / "s.tsv").exists()


# ----------------------------------------------------------------------------- builder + reader


def test_a_built_sheet_of_simulated_samples_ingests(hest, tmp_path):
    """The builder's rows, resolved against the root as the workflow does, read back."""
    from pastflow.ingest.sample import ingest_sample
    from pastflow.sheet import load_sample_sheet

    root = next(iter(hest.values())).paths.root
    table = pd.DataFrame([json.loads(s.paths.metadata.read_text()) for s in hest.values()])
    table.to_csv(tmp_path / "meta.csv", index=False, encoding="utf-8-sig")
    build_hest_sheet(tmp_path / "meta.csv", root, tmp_path / "s.tsv", where="spot_diameter > 50")
    sheet = load_sample_sheet(tmp_path / "s.tsv", data_root=root)
    assert sheet["sample"].tolist() == [IDS[VISIUM], IDS[LEGACY_ST]]  # 55 and 100 um spots
    row = sheet.loc[IDS[LEGACY_ST]]
    out = ingest_sample(row["sample"], row["patient"], row["technology"], tmp_path / "s.zarr",
                        data=row["data"], image=row["image"], progress=False)
    uns = ad.read_zarr(out / "tables" / "table").uns["pastflow"]
    assert (uns["unit"], uns["unit_diameter_um"]) == ("spot", 100.0)
    assert uns["patient"] == row["patient"] and row["patient"].startswith("p1.")


# ----------------------------------------------------------------------------- README, config


def test_readme_cohort_command_and_hest_config_work_as_written(hest, repo_root, tmp_path):
    """The README's `pastflow cohort hest` block, run in a shell with its HEST folder, writes
    the sheet config/hest.yaml reads; that config validates over the defaults."""
    import re
    import subprocess
    import textwrap

    import yaml

    from pastflow.config import resolve_workflow_config
    from pastflow.sheet import load_sample_sheet

    text = (repo_root / "README.md").read_text()
    after = text[text.index("<!-- HEST cohort example"):]
    block = textwrap.dedent(re.search(r"```bash\n(.*?)```", after, re.DOTALL).group(1))
    root = next(iter(hest.values())).paths.root
    pd.DataFrame([json.loads(s.paths.metadata.read_text()) for s in hest.values()]).to_csv(
        root / "HEST_v1_1_0.csv", index=False, encoding="utf-8-sig")
    assert block.startswith("HEST=/data/hest_data")
    block = block.replace("HEST=/data/hest_data", f"HEST={root}", 1)
    (tmp_path / ".venv").symlink_to(repo_root / ".venv")  # the checkout's layout, not its files
    (tmp_path / "config").mkdir()
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    config = yaml.safe_load((repo_root / "config" / "hest.yaml").read_text())
    sheet = load_sample_sheet(tmp_path / config["samples"], data_root=root)
    assert sorted(sheet["sample"]) == sorted(IDS.values())  # every simulated one is breast
    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    settings = resolve_workflow_config(merged(default, config), source="hest.yaml")
    assert settings.qc.n_top_genes == 2000 and not settings.simulate.enabled
    assert settings.pretrain.data.patch_px == default["pretrain"]["data"]["patch_px"]  # kept


def merged(base: dict, override: dict) -> dict:
    """Snakemake's merge of a --configfile over the default config (nested keys kept)."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out
