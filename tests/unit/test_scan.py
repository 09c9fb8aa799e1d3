"""``pastflow sheet --scan``: a sheet guessed from a folder of vendor outputs, on simulated
samples written in the vendors' layouts and on the real data in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pastflow.cli import main
from pastflow.errors import InputError
from pastflow.scan.detect import scan_folder
from pastflow.sheet import load_sample_sheet
from pastflow.simulate.cohort import simulate_sample
from pastflow.simulate.hest import simulate_hest_sample


def read_sheet(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)


def fill(path: Path, out: Path) -> Path:
    """The user's step: a patient and a split on every row."""
    sheet = read_sheet(path).assign(patient=lambda t: "P_" + t["sample"], split="train")
    sheet.to_csv(out, sep="\t", index=False)
    return out


@pytest.fixture(scope="module")
def vendor_folder(tmp_path_factory) -> Path:
    """One sample of each simulated technology in its vendor layout, a HEST-1k root, and
    distractors (a README, a hidden folder with a slide)."""
    root = tmp_path_factory.mktemp("cohort")
    for technology in ("xenium", "visium", "visium_hd", "he_only"):
        simulate_sample(root, f"s_{technology}", "P1", technology, n_cells=80, progress=False)
    simulate_hest_sample(root / "hest", "TENX99", "P2", "Visium", n_cells=60, size_um=300)
    (root / "README.txt").write_text("not a sample")
    (root / ".cache").mkdir()
    shutil.copy(root / "s_he_only" / "he.tif", root / ".cache" / "copy.tif")
    return root


def test_scan_finds_every_technology_and_its_files(vendor_folder, tmp_path, capsys):
    out = tmp_path / "samples.tsv"
    assert main(["sheet", "--scan", str(vendor_folder), "--out", str(out)]) == 0
    sheet = read_sheet(out).set_index("sample")
    assert dict(sheet["technology"]) == {
        "s_xenium": "xenium", "s_visium": "visium", "s_visium_hd": "visium_hd",
        "s_he_only": "he_only", "TENX99": "hest"}
    root = str(vendor_folder.resolve())
    assert sheet.loc["s_xenium", "data"] == f"{root}/s_xenium/xenium"
    assert sheet.loc["s_xenium", "image"] == f"{root}/s_xenium/xenium/he.ome.tif"
    assert sheet.loc["s_xenium", "alignment"] == f"{root}/s_xenium/xenium/he_imagealignment.csv"
    assert sheet.loc["s_visium_hd", "data"] == f"{root}/s_visium_hd/outs"
    assert sheet.loc["s_visium_hd", "image"] == f"{root}/s_visium_hd/he.tif"
    assert sheet.loc["TENX99", "data"] == f"{root}/hest/st/TENX99.h5ad"
    assert sheet.loc["TENX99", "image"] == f"{root}/hest/wsis/TENX99.tif"
    # patient and split are the user's to fill; the sheet says so before they do
    assert (sheet["patient"] == "").all() and (sheet["split"] == "").all()
    with pytest.raises(InputError, match="column 'patient': empty; fill it in"):
        load_sample_sheet(out)
    assert len(load_sample_sheet(fill(out, tmp_path / "filled.tsv"))) == 5
    assert "5 samples" in capsys.readouterr().err


def test_scan_leaves_an_ambiguous_image_empty_and_says_which_files(vendor_folder, tmp_path):
    folder = tmp_path / "two_slides"
    shutil.copytree(vendor_folder / "s_visium", folder / "s_visium")
    shutil.copy(folder / "s_visium" / "he.tif", folder / "s_visium" / "serial_section.tif")
    shutil.move(folder / "s_visium" / "he.tif", folder / "s_visium" / "first.tif")
    out = tmp_path / "samples.tsv"
    assert main(["sheet", "--scan", str(folder), "--out", str(out)]) == 0
    sheet = read_sheet(out)
    assert list(sheet["technology"]) == ["visium"] and sheet.loc[0, "image"] == ""
    notes = [line for line in out.read_text().splitlines() if line.startswith("# s_visium:")]
    assert notes and "first.tif" in notes[0] and "serial_section.tif" in notes[0]


def test_ids_are_made_safe_and_unique(tmp_path, vendor_folder):
    for name in ("a slide (1).tif", "a_slide_1.tif"):
        shutil.copy(vendor_folder / "s_he_only" / "he.tif", tmp_path / name)
    ids = sorted(s.sample for s in scan_folder(tmp_path))
    assert ids == ["a_slide_1", "a_slide_1-2"]


def test_bad_scans_are_refused_by_name(tmp_path, capsys):
    assert main(["sheet", "--scan", str(tmp_path / "absent"), "--out",
                 str(tmp_path / "s.tsv")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sheet", "--scan", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "s.tsv")]) == 2
    assert "no samples found" in capsys.readouterr().err
    assert not (tmp_path / "s.tsv").exists()
    (tmp_path / "s.tsv").write_text("mine")
    assert main(["sheet", "--scan", str(tmp_path), "--out", str(tmp_path / "s.tsv")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "s.tsv").read_text() == "mine"


def test_scan_of_the_real_shared_data(shared_data, tmp_path):
    out = tmp_path / "samples.tsv"
    assert main(["sheet", "--scan", str(shared_data), "--out", str(out)]) == 0
    sheet = read_sheet(out).set_index("sample")
    her2st = [f"C{i}" for i in range(2, 7)]
    assert (sheet.loc[her2st, "technology"] == "legacy_st").all()
    assert sheet.loc["C2", "image"].endswith("her2st/C2/5714_HE_BT_C2.jpg")
    assert sheet.loc["C2", "alignment"].endswith("her2st/C2/C2_selection.tsv")
    assert sheet.loc["xenium_sp_subset", "technology"] == "xenium"
    assert sheet.loc["test_data", "technology"] == "visium"  # the stLearn AnnData
    assert sheet.loc["test_data", "image"].endswith("visium_breast_blockA/test_image.jpg")
    # Space Ranger outs without a full-resolution H&E: found, and the note says what to fill
    assert sheet.loc["spaceranger_1.0.0", "image"] == ""
    text = out.read_text()
    assert "# spaceranger_1.0.0: no full-resolution H&E" in text
    assert (sheet.loc[["CMU-1-Small-Region", "OS-1-detail"], "technology"] == "he_only").all()
    # a PNG records no pixel size; an SVS does
    assert "# skimage_ihc: skimage_ihc.png records no microns per pixel" in text
    assert "# CMU-1-Small-Region:" not in text
