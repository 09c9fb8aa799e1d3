"""The catalogue of bad inputs (docs/bad-inputs.md), each through a real entry point.

Stages run as ``pastflow <stage> ...`` through :func:`pastflow.cli.main`: a refused input must
exit with status 2 and print one line ``pastflow <stage>: error: <file>: <problem>`` on stderr,
and leave nothing in the output folder: neither the output nor ``.*.tmp-*`` debris. Validators
that write nothing (sample sheet, clinical table, gene panels, weights) are called directly.
Every input is made here in its real format (tifffile TIFFs, Pillow JPEGs, the simulator's
Xenium bundle, HER2ST-layout legacy ST files) or cut from a real file of ../shared/data.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from pastflow.cli import main
from pastflow.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
MPP = 0.5
GENES = [f"GENE{i}" for i in range(12)]


# --------------------------------------------------------------------------- inputs


def he_like(height: int, width: int, centres: np.ndarray, radius_px: float) -> np.ndarray:
    """``uint8 (h, w, 3)`` H&E-like RGB: eosin background, hematoxylin disks (Beer-Lambert)."""
    yy, xx = np.mgrid[0:height, 0:width]
    density = np.full((height, width), 0.05, np.float32)
    for cx, cy in centres:
        density[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius_px**2] = 0.9
    hematoxylin = np.array([0.650, 0.704, 0.286], np.float32)
    eosin = np.array([0.07, 0.99, 0.11], np.float32)
    od = density[..., None] * hematoxylin + 0.25 * eosin
    return (240 * np.exp(-od)).astype(np.uint8)


def write_tiff(path: Path, rgb: np.ndarray, mpp: float = MPP) -> Path:
    """A tiled JPEG TIFF with its resolution, as scanners export them."""
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(64, 64), compression="jpeg",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def write_legacy_st(folder: Path, *, counts: np.ndarray | None = None, selected: int = 1,
                    blank: bool = False, n_side: int = 6, pitch_px: float = 40.0) -> dict[str, Path]:
    """A legacy ST section in the HER2ST layout: counts TSV, spot selection TSV, JPEG H&E.

    Spots sit on the 200 um array grid, ``pitch_px`` apart (so the fitted mpp is
    200 / pitch_px). ``counts``: ``(n_side**2, len(GENES))`` to write instead of Poisson(8).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ax, ay = np.meshgrid(np.arange(1, n_side + 1), np.arange(1, n_side + 1))
    ax, ay = ax.ravel(), ay.ravel()
    px, py = 30 + pitch_px * (ax - 1), 30 + pitch_px * (ay - 1)
    ids = [f"{x}x{y}" for x, y in zip(ax, ay)]
    selection = pd.DataFrame({"x": ax, "y": ay, "new_x": ax, "new_y": ay, "pixel_x": px,
                              "pixel_y": py, "selected": selected})
    selection.to_csv(folder / "S_selection.tsv", sep="\t", index=False)
    values = rng.poisson(8, (len(ids), len(GENES))).astype(float) if counts is None else counts
    pd.DataFrame(values, index=ids, columns=GENES).to_csv(folder / "S.tsv.gz", sep="\t", na_rep="NaN")
    side = int(60 + pitch_px * (n_side - 1))
    rgb = (np.full((side, side, 3), 255, np.uint8) if blank else
           he_like(side, side, rng.uniform(0, side, (40, 2)), 3))
    Image.fromarray(rgb).save(folder / "S_HE.jpg", quality=92)
    return {"data": folder / "S.tsv.gz", "image": folder / "S_HE.jpg",
            "alignment": folder / "S_selection.tsv"}


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A 384 x 448 px H&E-like tiled JPEG TIFF at 0.5 um/px with a grid of nuclei."""
    xs, ys = np.meshgrid(np.arange(20, 440, 30), np.arange(20, 380, 30))
    centres = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    return write_tiff(tmp_path_factory.mktemp("slide") / "he.tif", he_like(384, 448, centres, 7))


@pytest.fixture(scope="module")
def xenium(tmp_path_factory) -> dict[str, Path]:
    """The simulator's Xenium bundle (real XOA layout), its H&E OME-TIFF and alignment csv."""
    import json

    from pastflow.simulate.cohort import simulate_sample

    folder = simulate_sample(tmp_path_factory.mktemp("sim"), "xa", "P1", "xenium", n_cells=120,
                             seed=3, progress=False)
    sheet = json.loads((folder / "truth" / "sample.json").read_text())["sheet"]
    return {k: folder / v for k, v in sheet.items() if v}


# --------------------------------------------------------------------------- checks


def refused(argv: list[str], capsys, file: Path | str, problem: str, out_dir: Path) -> str:
    """Run ``pastflow ARGV``; assert exit 2, the one-line message, and an empty ``out_dir``."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"pastflow {argv[0]}: error: ")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"pastflow {argv[0]}: error: {file}: "), lines[0]
    assert problem in lines[0], lines[0]
    assert_nothing_written(out_dir)
    return lines[0]


def assert_nothing_written(out_dir: Path) -> None:
    """Neither an output nor temporary debris (``.name.tmp-*``, scratch folders)."""
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert left == [], f"left behind in {out_dir}: {left}"


def ingest_argv(out: Path, technology: str, *, data="", image="", alignment="", mpp=None) -> list[str]:
    argv = ["ingest", "--sample", "s", "--patient", "p", "--technology", technology, "--data",
            str(data), "--image", str(image), "--alignment", str(alignment), "--no-progress",
            "--out", str(out)]
    if mpp:
        settings = Path(out).parent.parent / f"ingest-mpp-{mpp}.yaml"  # beside the output folder
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(f"ingest: {{mpp: {mpp}}}\n")
        argv += ["--settings", str(settings)]
    return argv


# --------------------------------------------------------------------------- missing / empty files


def test_missing_slide(tmp_path, capsys):
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=tmp_path / "nope.tif"), capsys,
            tmp_path / "nope.tif", "image not found", out)


def test_empty_slide_file(tmp_path, capsys):
    empty = tmp_path / "empty.svs"
    empty.touch()
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=empty), capsys, empty,
            "image file is empty", out)


def test_empty_data_folder(tmp_path, capsys, slide):
    outs = tmp_path / "outs"
    outs.mkdir()
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "visium", data=outs, image=slide), capsys, outs,
            "data folder is empty", out)


def test_qc_of_a_missing_sample(tmp_path, capsys):
    out = tmp_path / "out"
    refused(["qc", "--ingested", str(tmp_path / "nope.zarr"), "--out", str(out / "s.h5ad"),
             "--fig-distributions", str(out / "d.png"), "--fig-spatial", str(out / "sp.png")],
            capsys, tmp_path / "nope.zarr", "ingested sample not found", out)


def test_patches_of_a_folder_that_is_not_an_ingested_sample(tmp_path, capsys):
    folder = tmp_path / "s.zarr"
    folder.mkdir()
    out = tmp_path / "out"
    refused(["patches", "--ingested", str(folder), "--out", str(out / "s.h5"), "--gallery",
             str(out / "s.png"), "--no-progress"], capsys, folder / "tables" / "table",
            "not an AnnData table", out)


def test_missing_sample_sheet(tmp_path):
    from pastflow.sheet import load_sample_sheet

    with pytest.raises(InputError, match="sample sheet not found") as err:
        load_sample_sheet(tmp_path / "samples.tsv")
    assert err.value.path == str(tmp_path / "samples.tsv")


# --------------------------------------------------------------------------- the sample sheet


@pytest.mark.slow  # starts Snakemake (~10 s)
def test_bad_sheet_stops_snakemake_before_any_job(tmp_path):
    """A duplicate sample id: the workflow exits at start-up naming sheet, line and column."""
    (tmp_path / "config").mkdir()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["simulate"]["enabled"] = True  # paths are not checked; the sheet itself is
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    sheet = tmp_path / "config" / "samples.tsv"
    row = "s1\tP1\the_only\t\tresults/simulated/s1/he.tif\t\ttest\n"
    sheet.write_text("sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n" + row + row)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile",
         str(REPO / "workflow" / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
         "--configfile", str(tmp_path / "config" / "config.yaml")],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    assert run.returncode != 0
    assert ("pastflow: invalid input: config/samples.tsv: line 3 (sample 's1'), column 'sample': "
            "duplicate sample id (first on line 2)") in run.stderr
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- corrupt slides


def test_truncated_tiff(tmp_path, capsys, slide):
    data = slide.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])  # tiles lost, the IFD (written first) intact
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=cut), capsys, cut,
            "truncated file: level 0 image data ends at byte", out)


def test_tiff_cut_inside_its_header(tmp_path, capsys, slide):
    cut = tmp_path / "cut.tif"
    cut.write_bytes(slide.read_bytes()[:64])
    out = tmp_path / "out"
    message = refused(ingest_argv(out / "s.zarr", "he_only", image=cut), capsys, cut, "", out)
    assert "not a readable TIFF" in message or "holds no readable image" in message


def test_truncated_svs(tmp_path, capsys):
    svs = DATA / "images" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} is absent (../shared/data not here)")
    data = svs.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])  # an Aperio SVS keeps its IFDs after the tiles
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=cut), capsys, cut,
            "the TIFF holds no readable image (truncated or corrupt file)", out)


def test_garbage_jpeg(tmp_path, capsys):
    junk = tmp_path / "he.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(4000))
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=junk, mpp=0.5), capsys, junk,
            "cannot decode image", out)


def test_truncated_jpeg(tmp_path, capsys):
    rgb = he_like(300, 300, np.random.default_rng(1).uniform(0, 300, (30, 2)), 6)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(rgb).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=cut, mpp=0.5), capsys, cut,
            "cannot decode image (image file is truncated", out)


def test_corrupt_tile_found_while_writing_the_patch_store(tmp_path, capsys, slide):
    """The slide was fine at ingest and damaged since: the store fails part-way, leaves nothing."""
    copy = tmp_path / "he.tif"
    copy.write_bytes(slide.read_bytes())
    sample = tmp_path / "s.zarr"
    assert main(ingest_argv(sample, "he_only", image=copy)) == 0
    data = bytearray(copy.read_bytes())
    page = tifffile.TiffFile(slide).pages[0]
    offset, count = page.dataoffsets[30], page.databytecounts[30]
    data[offset: offset + count] = b"\x00" * count  # tile 30: no JPEG left
    copy.write_bytes(bytes(data))
    out = tmp_path / "out"
    refused(["patches", "--ingested", str(sample), "--out", str(out / "s.h5"), "--gallery",
             str(out / "s_gallery.png"), "--no-progress"], capsys, copy,
            "cannot decode level 0 tile 30", out)
    assert out.is_dir()  # the store was being written there, and is gone


# --------------------------------------------------------------------------- alignment


def test_singular_alignment_matrix(tmp_path, capsys, xenium):
    csv = tmp_path / "he_imagealignment.csv"
    np.savetxt(csv, [[1, 2, 0], [2, 4, 0], [0, 0, 1]], delimiter=",")
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "xenium", data=xenium["data"], image=xenium["image"],
                        alignment=csv), capsys, csv,
            "transformation matrix is singular (its 2x2 part has determinant 0)", out)


def test_alignment_that_maps_cells_outside_the_image(tmp_path, capsys, xenium):
    matrix = np.loadtxt(xenium["alignment"], delimiter=",")
    matrix[:2, 2] += 1e5  # a shift far beyond the H&E
    csv = tmp_path / "he_imagealignment.csv"
    np.savetxt(csv, matrix, delimiter=",")
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "xenium", data=xenium["data"], image=xenium["image"],
                        alignment=csv), capsys, csv, "120 of 120 cells map outside the", out)


def test_alignment_that_is_not_a_3x3_matrix(tmp_path, capsys, xenium):
    csv = tmp_path / "he_imagealignment.csv"
    csv.write_text("1,0,0\n0,1,0\n")
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "xenium", data=xenium["data"], image=xenium["image"],
                        alignment=csv), capsys, csv,
            "expected a 3x3 transformation matrix, found shape (2, 3)", out)


# --------------------------------------------------------------------------- counts and positions


@pytest.mark.parametrize("value, problem", [
    (np.nan, "the count matrix holds 1 NaN value(s); expected finite counts"),
    (np.inf, "the count matrix holds 1 infinite value(s); expected finite counts"),
])
def test_nan_or_infinite_counts(tmp_path, capsys, value, problem):
    counts = np.random.default_rng(0).poisson(8, (36, len(GENES))).astype(float)
    counts[7, 3] = value
    paths = write_legacy_st(tmp_path / "in", counts=counts)
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "legacy_st", **paths), capsys, paths["data"], problem, out)


def test_spot_without_a_position(tmp_path, capsys):
    paths = write_legacy_st(tmp_path / "in")
    selection = pd.read_csv(paths["alignment"], sep="\t")
    selection.loc[4, "pixel_x"] = np.nan
    selection.to_csv(paths["alignment"], sep="\t", index=False)
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "legacy_st", **paths), capsys, paths["alignment"],
            "column 'pixel_x': 1 selected spot(s) with a missing, non-numeric or infinite value "
            "(first on line 6)", out)


def test_cells_with_zero_counts_are_kept_and_qc_filters_them(tmp_path, capsys, caplog):
    counts = np.random.default_rng(0).poisson(8, (36, len(GENES))).astype(float)
    counts[:5] = 0
    paths = write_legacy_st(tmp_path / "in", counts=counts)
    sample = tmp_path / "s.zarr"
    with caplog.at_level(logging.WARNING):
        assert main(ingest_argv(sample, "legacy_st", **paths)) == 0
    assert "5 of 36 cells have zero counts (kept; qc filters them)" in caplog.text
    qc = tmp_path / "qc" / "s.h5ad"
    settings = tmp_path / "settings.yaml"
    settings.write_text("qc: {min_cells: 1}\n")
    assert main(["qc", "--ingested", str(sample), "--out", str(qc), "--fig-distributions",
                 str(tmp_path / "qc" / "d.png"), "--fig-spatial", str(tmp_path / "qc" / "sp.png"),
                 "--settings", str(settings)]) == 0
    assert ad.read_h5ad(qc).n_obs == 31


def test_every_cell_with_zero_counts_fails_qc(tmp_path, capsys):
    paths = write_legacy_st(tmp_path / "in", counts=np.zeros((36, len(GENES))))
    sample = tmp_path / "s.zarr"
    assert main(ingest_argv(sample, "legacy_st", **paths)) == 0
    out = tmp_path / "out"
    refused(["qc", "--ingested", str(sample), "--out", str(out / "s.h5ad"), "--fig-distributions",
             str(out / "d.png"), "--fig-spatial", str(out / "sp.png")], capsys, sample,
            "no cell passes QC (min_counts=10, min_genes=5; 36 cells in)", out)


# --------------------------------------------------------------------------- no tissue, no cells


def test_blank_he_only_slide_has_no_cells(tmp_path, capsys):
    blank = write_tiff(tmp_path / "blank.tif", np.full((256, 320, 3), 250, np.uint8))
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=blank), capsys, blank,
            "no nuclei found on the slide (blank, out of focus, or not an H&E?)", out)


def test_no_selected_spots(tmp_path, capsys):
    paths = write_legacy_st(tmp_path / "in", selected=0)
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "legacy_st", **paths), capsys, paths["alignment"],
            "no selected spots", out)


def test_blank_he_under_expression_is_flagged_not_refused(tmp_path, caplog):
    """Counts and positions are good; only image stages are affected: said twice, loudly."""
    from pastflow.patches.reader import PatchStore

    paths = write_legacy_st(tmp_path / "in", blank=True)
    sample = tmp_path / "s.zarr"
    with caplog.at_level(logging.WARNING):
        assert main(ingest_argv(sample, "legacy_st", **paths)) == 0
        settings = tmp_path / "settings.yaml"
        settings.write_text("patches: {patch_um: 200, mpp: 5}\n")
        assert main(["patches", "--ingested", str(sample), "--out", str(tmp_path / "s.h5"),
                     "--settings", str(settings), "--no-progress"]) == 0
    assert "the H&E is blank (one flat colour)" in caplog.text
    assert f"no tissue found on the slide {paths['image'].resolve()}: all 36 cells" in caplog.text
    assert ad.read_zarr(sample / "tables" / "table").uns["pastflow"]["he_blank"]
    assert not PatchStore(tmp_path / "s.h5").in_tissue.any()


# --------------------------------------------------------------------------- gene panels


def panel(genes: list[str], hvg: list[str]) -> ad.AnnData:
    var = pd.DataFrame({"highly_variable": [g in hvg for g in genes]}, index=pd.Index(genes))
    return ad.AnnData(np.zeros((2, len(genes)), np.float32), var=var)


def test_differing_panels_use_the_shared_genes_and_say_how_many_were_dropped(caplog):
    from pastflow.models.data import select_cohort_genes

    base = [f"G{i}" for i in range(30)]
    a = panel(base, base[:15])
    b = panel(base[3:] + [f"Y{i}" for i in range(5)], base[:15] + ["Y0"])
    with caplog.at_level(logging.INFO, logger="pastflow.models.data"):
        shared = select_cohort_genes([a, b], None, panel="shared", sources=["a.h5ad", "b.h5ad"])
        union = select_cohort_genes([a, b], None, panel="union")
    assert shared == base[3:15]  # G0-G2 are not in b, Y0 not in a
    assert ("gene panels differ between the 2 samples: 8 genes are not measured in every sample "
            "and are dropped (4 of them highly variable, e.g. G0, G1, G2, Y0); 27 shared genes "
            "remain") in caplog.text
    assert set(union) == set(base[:15]) | {"Y0"}  # the default: kept, masked where missing
    assert "4 highly variable genes are not measured in every sample and are masked" in caplog.text


def test_panels_sharing_too_few_genes_fail_naming_the_odd_one_out():
    from pastflow.models.data import select_cohort_genes

    base = [f"G{i}" for i in range(30)]
    odd = panel(base[:4] + [f"Z{i}" for i in range(40)], base[:4])
    with pytest.raises(InputError) as err:
        select_cohort_genes([panel(base, base), odd, panel(base, base[:10])], None, panel="shared",
                            sources=["a.h5ad", "odd.h5ad", "c.h5ad"])
    assert err.value.path == "odd.h5ad"
    assert "only 4 genes are measured in every one of the 3 samples (need >= 10)" in str(err.value)


# --------------------------------------------------------------------------- clinical table


def write_clinical(path: Path, rows: list[str], header: str = "patient\tos_time\tos_event\tage") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_good_clinical_table_is_read_in_sheet_order(tmp_path, caplog):
    from pastflow.clinical import read_clinical

    path = write_clinical(tmp_path / "clinical.tsv",
                          ["P1\t12.5\t1\t60", "P2\t30\t0\t71", "P3\t0\t1\t55", "P9\t4\t1\t40"])
    with caplog.at_level(logging.WARNING):
        table = read_clinical(path, ["P2", "P1", "P2", "P3"])
    assert list(table.index) == ["P2", "P1", "P3"]
    assert table["os_time"].tolist() == [30.0, 12.5, 0.0] and table["os_event"].tolist() == [0, 1, 1]
    assert table["age"].tolist() == ["71", "60", "55"]
    assert "1 patients are not in the sample sheet and are left out ('P9')" in caplog.text


@pytest.mark.parametrize("rows, problem", [
    (["P1\t-3\t1\t60", "P2\t30\t0\t71"],
     "line 2 (patient 'P1'), column 'os_time': negative survival time -3"),
    (["P1\t12\t\t60", "P2\t30\t0\t71"],
     "line 2 (patient 'P1'), column 'os_event': missing event (1 = event observed, 0 = censored)"),
    (["P1\t12\t1\t60", "P2\t30\t2\t71"], "line 3 (patient 'P2'), column 'os_event': '2' is not 0 or 1"),
    (["P1\tNA\t1\t60", "P2\t30\t0\t71"],
     "line 2 (patient 'P1'), column 'os_time': missing survival time"),
    (["P1\tinf\t1\t60", "P2\t30\t0\t71"], "column 'os_time': survival time must be finite"),
    (["P1\t12 months\t1\t60", "P2\t30\t0\t71"], "column 'os_time': '12 months' is not a number"),
    (["P1\t12\t1\t60", "P1\t30\t0\t71"],
     "line 3 (patient 'P1'), column 'patient': patient listed twice (first on line 2)"),
    (["P1\t12\t1\t60"], "1 of the 2 patients of the sample sheet are not in the clinical table: 'P2'"),
])
def test_bad_clinical_tables(tmp_path, rows, problem):
    from pastflow.clinical import read_clinical

    path = write_clinical(tmp_path / "clinical.tsv", rows)
    with pytest.raises(InputError) as err:
        read_clinical(path, ["P1", "P2"])
    assert err.value.path == str(path)
    assert problem in str(err.value)


@pytest.mark.parametrize("content, problem", [
    (None, "clinical table not found"),
    ("", "clinical table is empty"),
    ("patient\tos_time\n", "missing column(s) os_event"),
    ("patient\tos_time\tos_event\n", "clinical table has a header but no patients"),
])
def test_missing_empty_or_malformed_clinical_tables(tmp_path, content, problem):
    from pastflow.clinical import read_clinical

    path = tmp_path / "clinical.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=problem.replace("(", r"\(").replace(")", r"\)")) as err:
        read_clinical(path, ["P1"])
    assert err.value.path == str(path)


# --------------------------------------------------------------------------- model weights


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: a stand-in for any code a pickle can carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_holding_pickled_code_are_refused_without_running_it(tmp_path):
    import torch

    from pastflow.models.weights import read_state_dict

    marker = tmp_path / "code_ran"
    weights = tmp_path / "encoder.pth"
    torch.save({"weight": torch.zeros(2, 2), "extra": _Payload(marker)}, weights)
    with pytest.raises(InputError) as err:
        read_state_dict(weights)
    assert err.value.path == str(weights)
    assert "holds pickled code (objects other than tensors), refused" in str(err.value)
    assert "[it needs " in str(err.value)  # names the global the unpickler refused
    assert not marker.exists()
    # The payload is live: a plain torch.load would have run it.
    torch.load(weights, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- start-up checks (issue 16)


def snakemake_startup(folder: Path, config: dict, rows: list[str]) -> subprocess.CompletedProcess:
    """A dry run of the workflow in ``folder`` on a simulated sheet (no inputs needed)."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    config = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), **config}
    config["simulate"] = {**config["simulate"], "enabled": True}
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "config" / "samples.tsv").write_text(
        "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n" + "".join(rows))
    return subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--snakefile",
         str(REPO / "workflow" / "Snakefile"), "--directory", str(folder), "--cores", "1",
         "--configfile", str(folder / "config" / "config.yaml")],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))


def simulated_row(sample: str, technology: str, split: str) -> str:
    base = f"results/simulated/{sample}"
    if technology == "he_only":
        return f"{sample}\tP{sample}\the_only\t\t{base}/he.tif\t\t{split}\n"
    return (f"{sample}\tP{sample}\txenium\t{base}/xenium\t{base}/xenium/he.ome.tif\t"
            f"{base}/xenium/he_imagealignment.csv\t{split}\n")


@pytest.mark.slow  # starts Snakemake (~10 s)
def test_a_misspelt_panel_gene_stops_snakemake_before_any_job(tmp_path):
    """A panel gene the data does not measure would draw a blank stain that reads as a true
    negative; the simulated run is checked against the simulator's panel, before its files
    exist."""
    panel = tmp_path / "panel.yaml"
    panel.write_text("markers:\n  Ki67: {genes: [MKI76], compartment: nuclear}\n")
    run = snakemake_startup(tmp_path, {"stain": {"panel": str(panel), "images": ["Ki67"]}},
                            [simulated_row("s1", "xenium", "train")])
    assert run.returncode != 0
    assert (f"pastflow: invalid input: {panel}: marker 'Ki67': gene(s) 'MKI76' measured in none "
            "of the 1 sample(s) whose gene lists were read ('s1'); fix the symbol, or mark the "
            "marker `optional: true` if the data may lack it") in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "results" / "simulated").exists()


@pytest.mark.slow  # starts Snakemake (~10 s)
def test_a_sheet_without_training_samples_says_so_on_the_console_and_the_front_page(tmp_path):
    run = snakemake_startup(tmp_path, {}, [simulated_row("s1", "xenium", "test"),
                                           simulated_row("s2", "he_only", "train")])
    assert run.returncode == 0, run.stderr
    note = ("no training samples (split train, with expression): model stages skipped "
            "(pretrain, embed, predict, evaluate, stain, survival)")
    assert f"pastflow: {note}" in run.stderr
    # The summary job reads it for results/summary.json's `notes` (the report's front page).
    notes = tmp_path / "results" / "settings" / "notes.json"
    assert json.loads(notes.read_text()) == [note]


def test_a_patch_store_larger_than_the_free_disk_is_refused_with_the_true_reason(tmp_path, slide):
    """Not a bare "No space left on device" midway: the size is estimated before writing."""
    from pastflow.patches.store import build_patch_store

    out = tmp_path / "out" / "s.h5"
    with pytest.raises(InputError) as err:
        # 0.5 -> 0.00001 um/px: the slide's image 50,000 times larger a side, hundreds of TB.
        build_patch_store(slide, ["c1"], np.array([[10.0, 10.0]]), out, target_mpp=1e-5,
                          patch_px=8, progress=False)
    assert err.value.path == str(out)
    assert "the patch store needs" in str(err.value) and "GB free" in str(err.value)
    assert "check patches.mpp, patches.patch_um and patches.context_um" in str(err.value)
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- geometry and resource bombs


def test_alignment_scaled_x1000_is_refused_naming_the_matrix_as_the_likely_culprit(tmp_path, capsys,
                                                                                 xenium):
    """Today's failure: every cell inside one pixel of the corner, ingest exits 0."""
    matrix = np.loadtxt(xenium["alignment"], delimiter=",")
    matrix[:2] *= 1000
    csv = tmp_path / "he_imagealignment.csv"
    np.savetxt(csv, matrix, delimiter=",")
    out = tmp_path / "out"
    line = refused(ingest_argv(out / "s.zarr", "xenium", data=xenium["data"], image=xenium["image"],
                               alignment=csv), capsys, csv, "the alignment matrix gives", out)
    assert "gives 250 um per H&E pixel but the image records 0.25 um/px (1,000.0x apart)" in line, line
    assert "the alignment matrix is likely in the wrong unit (e.g. scaled x1000" in line, line


def test_cells_collapsed_into_a_corner_are_refused():
    from pastflow.ingest.common import check_in_image

    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 3, (200, 2))  # 200 cells within 3 px of a 4000 x 3000 px H&E
    with pytest.raises(InputError) as err:
        check_in_image(corner, (4000, 3000), "align.csv")
    assert str(err.value).startswith("align.csv: all 200 cells fall within ")
    assert "less than 0.5% of its width and height: the transform is in the wrong unit" in str(err.value)
    spread = rng.uniform(0, 3000, (200, 2))
    assert check_in_image(spread, (4000, 3000), "align.csv") == 0


@pytest.mark.parametrize("value", ["nan", "0", "-0.5"])
def test_invalid_resolution_in_the_file_metadata(tmp_path, capsys, slide, value):
    rgb = tifffile.imread(slide)
    image = tmp_path / "he.ome.tif"
    tifffile.imwrite(image, rgb, photometric="rgb", tile=(64, 64), ome=True,
                     metadata={"axes": "YXS", "PhysicalSizeX": value, "PhysicalSizeY": value})
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=image), capsys, image,
            "the file records an invalid resolution (OME PhysicalSizeX", out)


def zero_png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A valid greyscale PNG of zeros, built without compressing every byte: one block of
    scanlines deflated once, ended by a full flush (no back-references), repeated. ``rows``:
    write only that many rows of data (a header that declares more than the file holds)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    block_rows = 1000
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes((width + 1) * block_rows)) + raw.flush(zlib.Z_FULL_FLUSH)
    n_rows = height if rows is None else rows
    body = block * (n_rows // block_rows) + b"\x03\x00"  # + an empty final block
    adler = ((n_rows * (width + 1)) % 65521) << 16 | 1  # adler32 of that many zero bytes
    idat = b"\x78\xda" + body + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def test_png_bomb_is_refused_before_decoding(tmp_path, capsys):
    """40,000 x 40,000 px in ~1.5 MB: decoded whole it is 4.8 GB of RGB."""
    import resource
    import time

    image = zero_png(tmp_path / "he.png", 40_000, 40_000)
    assert image.stat().st_size < 2_000_000
    out = tmp_path / "out"
    start, rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(ingest_argv(out / "s.zarr", "he_only", image=image, mpp=0.5), capsys, image,
            "declares 40000 x 40000 px (1,600,000,000 px), over the limit for JPEG/PNG slides, "
            "config key ingest.max_jpeg_png_px = 1,000,000,000", out)
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 500_000  # kB: nothing decoded


def test_png_declaring_far_more_pixels_than_its_bytes_hold(tmp_path, capsys):
    """Under the pixel limit, but 2.7 GB declared in a few kB: refused on the ratio."""
    image = zero_png(tmp_path / "he.png", 30_000, 30_000, rows=1000)
    out = tmp_path / "out"
    refused(ingest_argv(out / "s.zarr", "he_only", image=image, mpp=0.5), capsys, image,
            "declares 30000 x 30000 px (2.7 GB decoded) in", out)
    with pytest.raises(InputError, match="a decompression bomb or a corrupt header"):
        from pastflow.slide import open_slide

        open_slide(image)  # every stage's reader, not only ingest


def test_the_jpeg_png_pixel_limit_is_a_setting(tmp_path, capsys):
    paths = write_legacy_st(tmp_path / "st")
    settings = tmp_path / "ingest.yaml"
    settings.write_text("ingest: {max_jpeg_png_px: 10000}\n")
    out = tmp_path / "out"
    argv = ingest_argv(out / "s.zarr", "legacy_st", **paths) + ["--settings", str(settings)]
    refused(argv, capsys, paths["image"], "declares 260 x 260 px (67,600 px), over the limit for "
            "JPEG/PNG slides, config key ingest.max_jpeg_png_px = 10,000", out)


def tiled_tiff(path: Path, width: int, height: int, tile: int, *, counts: str,
               mpp: float = 0.5) -> Path:
    """An uncompressed tiled RGB TIFF written field by field, with a tile table the writers
    refuse to make: ``counts`` "zero" (every TileByteCounts 0), "no-offset" (every
    TileOffsets 0) or "shared" (every tile pointing at one real tile's bytes)."""
    import struct

    n = -(-width // tile) * -(-height // tile)
    data = bytes(range(256)) * (tile * tile * 3 // 256)
    header = 8
    data_at = header
    offsets_at = data_at + len(data)
    counts_at = offsets_at + 4 * n
    bps_at = counts_at + 4 * n
    res_at = bps_at + 6
    ifd_at = res_at + 16
    offsets = {"zero": [data_at] * n, "no-offset": [0] * n, "shared": [data_at] * n}[counts]
    nbytes = {"zero": [0] * n, "no-offset": [len(data)] * n, "shared": [len(data)] * n}[counts]
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps_at), (259, 3, 1, 1),
            (262, 3, 1, 2), (277, 3, 1, 3), (282, 5, 1, res_at), (283, 5, 1, res_at + 8),
            (284, 3, 1, 1), (296, 3, 1, 3), (322, 3, 1, tile), (323, 3, 1, tile),
            (324, 4, n, offsets_at), (325, 4, n, counts_at)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + struct.pack(
            "<HH" if kind == 3 and count == 1 else "<I", *((value, 0) if kind == 3 and count == 1
                                                          else (value,)))
    ifd += struct.pack("<I", 0)
    per_cm = round(1e4 / mpp)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + data
                     + struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *nbytes)
                     + struct.pack("<3H", 8, 8, 8) + struct.pack("<4I", per_cm, 1, per_cm, 1) + ifd)
    return path


@pytest.mark.parametrize("counts, problem", [
    ("zero", "no image data: all 9604 tiles of level 0 (100000 x 100000 px) are empty or absent"),
    ("no-offset", "no image data: all 9604 tiles of level 0 (100000 x 100000 px) are empty or absent"),
    ("shared", "declares 100000 x 100000 px (30.0 GB decoded) in 3,145,728 bytes of image data"),
])
def test_tiff_declaring_100000_px_a_side_without_the_data_is_refused_up_front(tmp_path, capsys,
                                                                             counts, problem):
    """Today: tens of minutes of blank tiles for a file of a few hundred kB."""
    import time

    image = tiled_tiff(tmp_path / "he.tif", 100_000, 100_000, 1024, counts=counts)
    with tifffile.TiffFile(image) as tif:  # a real TIFF, as tifffile reads it
        assert tif.pages[0].shape == (100_000, 100_000, 3)
    out = tmp_path / "out"
    start = time.perf_counter()
    refused(ingest_argv(out / "s.zarr", "he_only", image=image), capsys, image, problem, out)
    assert time.perf_counter() - start < 10


def test_nucleus_detection_over_a_larger_area_than_its_budget_stops_before_any_tile(
        tmp_path, capsys, slide):
    """The budget (ingest.max_detection_mm2) is checked from the slide's size and mpp: here a
    0.043 mm^2 slide against a budget set low, as a 100,000 px square at 0.5 um/px (2,500 mm^2)
    meets the default 2,000."""
    settings = tmp_path / "ingest.yaml"
    settings.write_text("ingest: {max_detection_mm2: 0.01}\n")
    out = tmp_path / "out"
    argv = ingest_argv(out / "s.zarr", "he_only", image=slide) + ["--settings", str(settings)]
    refused(argv, capsys, slide, "nucleus detection over 0 mm^2 (448 x 384 px at 0.5 um/px) "
            "exceeds config key ingest.max_detection_mm2 = 0.01 mm^2", out)
