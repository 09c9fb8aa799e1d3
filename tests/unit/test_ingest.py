"""pastflow.ingest: geometry helpers, nucleus detection, and every reader end to end on
simulated samples written in the real vendor formats (checked against the simulator's truth)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from pastflow.contracts import HE_SPACE, IMAGE_KEY, OBS_COLUMNS, SHAPES_KEY, TABLE_KEY, UNS_KEYS
from pastflow.errors import InputError
from pastflow.ingest.settings import IngestSettings
from pastflow.ingest.sample import ingest_sample
from pastflow.ingest.common import (
    affine_scale,
    apply_affine,
    check_affine,
    check_in_image,
    fit_affine,
    looks_like_counts,
)
from pastflow.ingest.nuclei import detect_nuclei, label_centroids, segment_nuclei
from pastflow.ingest.xenium import read_alignment_csv, xenium_to_he
from pastflow.slide import open_slide

N_CELLS = 300
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One small simulated sample per technology (real vendor formats), ``{technology: folder}``."""
    from pastflow.simulate.cohort import simulate_sample

    root = tmp_path_factory.mktemp("sim")
    return {t: simulate_sample(root, f"s_{t}", "P1", t, n_cells=n, seed=i, progress=False)
            for i, (t, n) in enumerate([("xenium", N_CELLS), ("visium", N_CELLS),
                                        ("visium_hd", N_CELLS), ("he_only", 600)])}


def sheet_paths(folder: Path) -> dict[str, str]:
    """The sample-sheet paths the simulator recorded for this sample, made absolute."""
    sheet = json.loads((folder / "truth" / "sample.json").read_text())["sheet"]
    return {k: str(folder / v) if v else "" for k, v in sheet.items()}


@pytest.fixture(scope="module")
def ingested(simulated, tmp_path_factory):
    """Each simulated sample ingested: ``{technology: (zarr path, table, truth)}``."""
    out = tmp_path_factory.mktemp("ingest")
    result = {}
    for technology, folder in simulated.items():
        path = ingest_sample(folder.name, "P1", technology, out / f"{folder.name}.zarr", progress=False,
                             **sheet_paths(folder))
        table = ad.read_zarr(path / "tables" / TABLE_KEY)
        result[technology] = (path, table, pd.read_parquet(folder / "truth" / "cells.parquet"))
    return result


def scale0(element):
    """Level 0 of an image element, single- or multiscale."""
    return element["scale0"]["image"] if "scale0" in getattr(element, "children", {}) else element


def write_he_png(path: Path, size: tuple[int, int], centres: np.ndarray, radius_px: float) -> None:
    """An H&E-like PNG: pink stroma with hematoxylin-dense disks (Beer-Lambert colour)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    density = np.full((h, w), 0.05, np.float32)
    for cx, cy in centres:
        density[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius_px**2] = 0.9
    hematoxylin = np.array([0.650, 0.704, 0.286], np.float32)
    eosin = np.array([0.07, 0.99, 0.11], np.float32)
    od = density[..., None] * hematoxylin + 0.25 * eosin
    Image.fromarray((240 * np.exp(-od)).astype(np.uint8)).save(path)


# --------------------------------------------------------------------------- geometry helpers


def test_fit_affine_recovers_rotation_scale_shift():
    rng = np.random.default_rng(0)
    t = np.deg2rad(7.0)
    c, s = 2.5 * np.cos(t), 2.5 * np.sin(t)
    truth = np.array([[c, -s, 40.0], [s, c, -12.0], [0, 0, 1]])
    src = rng.uniform(0, 500, (50, 2))
    matrix, rms = fit_affine(src, apply_affine(truth, src))
    np.testing.assert_allclose(matrix, truth, atol=1e-9)
    assert rms < 1e-9
    assert affine_scale(truth) == pytest.approx(2.5)


@pytest.mark.parametrize("matrix, problem", [
    (np.array([[1.0, 2.0, 0], [2.0, 4.0, 0], [0, 0, 1]]), "singular"),
    (np.eye(2), "3x3"),
    (np.array([[1.0, 0, np.nan], [0, 1, 0], [0, 0, 1]]), "NaN"),
    (np.array([[1.0, 0, 0], [0, 1, 0], [0.5, 0, 1]]), "last row"),
])
def test_check_affine_names_source_and_problem(matrix, problem):
    with pytest.raises(InputError, match=problem) as err:
        check_affine(matrix, "align.csv")
    assert err.value.path == "align.csv"


def test_alignment_csv_singular_is_input_error(tmp_path):
    csv = tmp_path / "he_imagealignment.csv"
    np.savetxt(csv, [[1, 2, 0], [2, 4, 0], [0, 0, 1]], delimiter=",")
    with pytest.raises(InputError, match="singular") as err:
        read_alignment_csv(csv)
    assert str(csv) in str(err.value)


def test_xenium_alignment_convention_maps_microns_to_he_pixels():
    # H&E at 0.5 um/px rotated 90 degrees and shifted; morphology pixels of 0.2125 um.
    pixel_size = 0.2125
    he_px_to_um = np.array([[0, -0.5, 300.0], [0.5, 0, 10.0], [0, 0, 1]])
    alignment = np.diag([1 / pixel_size, 1 / pixel_size, 1]) @ he_px_to_um  # the 10x csv
    um = np.array([[300.0, 10.0], [250.0, 60.0]])
    np.testing.assert_allclose(apply_affine(xenium_to_he(alignment, pixel_size), um),
                               [[0.0, 0.0], [100.0, 100.0]], atol=1e-9)


def test_check_in_image_fails_when_most_points_are_off_the_slide():
    inside = np.array([[10.0, 10.0], [50.0, 20.0], [99.0, 99.0]])
    assert check_in_image(inside, (100, 100), "x.csv") == 0
    assert check_in_image(np.vstack([inside, [[150.0, 10.0]]]), (100, 100), "x.csv") == 1
    with pytest.raises(InputError, match="2 of 3 cells map outside") as err:
        check_in_image(inside * 3 + 1, (100, 100), "x.csv")
    assert err.value.path == "x.csv"


def test_looks_like_counts():
    assert looks_like_counts(np.array([[0, 3], [1, 0]], dtype=np.float32))
    assert not looks_like_counts(np.array([[0.5, 3]]))
    assert not looks_like_counts(np.array([[-1.0, 3]]))


# --------------------------------------------------------------------------- nuclei


def test_label_centroids_gives_centres_and_areas():
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:6] = 1  # 3x3 square centred at (4, 3)
    labels[10:12, 20:28] = 3  # label 2 absent
    xy, area = label_centroids(labels)
    np.testing.assert_allclose(xy, [[4.0, 3.0], [23.5, 10.5]])
    np.testing.assert_allclose(area, [9, 16])


def test_segment_nuclei_splits_touching_nuclei(tmp_path):
    # Two pairs of touching 8 um nuclei (centres 7 um apart) and one isolated, at 0.5 um/px.
    centres = np.array([[30, 30], [44, 30], [30, 80], [30, 94], [90, 60]], float)
    write_he_png(tmp_path / "he.png", (120, 130), centres, radius_px=8)
    rgb = np.asarray(Image.open(tmp_path / "he.png").convert("RGB"))
    labels = segment_nuclei(rgb, threshold=0.04, mpp=0.5)  # a typical slide-wide Otsu value
    xy, _ = label_centroids(labels)
    assert len(xy) == 5
    d, _ = cKDTree(xy).query(centres)
    assert d.max() < 1.5


def test_detect_nuclei_counts_each_nucleus_once_across_tile_seams(tmp_path):
    # A grid of nuclei with spacing that puts many of them on the 64-px tile borders.
    xs, ys = np.meshgrid(np.arange(16, 400, 24), np.arange(16, 300, 24))
    centres = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    write_he_png(tmp_path / "grid.png", (310, 410), centres, radius_px=7)
    with open_slide(tmp_path / "grid.png") as slide:
        found = detect_nuclei(slide, mpp=0.5, tile_px=64, progress=False)
    assert len(found) == len(centres)
    d, j = cKDTree(found[["x_px", "y_px"]].to_numpy()).query(centres)
    assert len(set(j)) == len(centres) and d.max() < 1.0
    # area of a 7 px disk at 0.5 um/px: ~ pi 49 px * 0.25 = 38 um2
    assert found["area_um2"].median() == pytest.approx(np.pi * 49 * 0.25, rel=0.15)


def test_detect_nuclei_at_half_resolution_maps_back_to_level0(tmp_path):
    # The same slide at 0.25 um/px is block-averaged 2x; centroids must come back in level-0 px.
    centres = np.array([[40.0, 40.0], [120.0, 60.0], [200.0, 150.0]])
    write_he_png(tmp_path / "fine.png", (220, 260), centres, radius_px=14)
    with open_slide(tmp_path / "fine.png") as slide:
        found = detect_nuclei(slide, mpp=0.25, progress=False)
    d, _ = cKDTree(found[["x_px", "y_px"]].to_numpy()).query(centres)
    assert len(found) == 3 and d.max() < 1.0


# --------------------------------------------------------------------------- simulated samples


def assert_contract(path: Path, table, technology: str) -> None:
    import spatialdata as sd
    from scipy import sparse
    from spatialdata.transformations import get_transformation

    assert tuple(table.obs.columns[:len(OBS_COLUMNS)]) == OBS_COLUMNS
    assert sparse.isspmatrix_csr(table.X) and table.X.dtype == np.float32
    assert table.var_names.is_unique and table.obs["cell_id"].is_unique
    np.testing.assert_allclose(table.obsm["spatial"], table.obs[["x_px", "y_px"]].to_numpy())
    meta = table.uns["pastflow"]
    assert set(UNS_KEYS) <= set(meta)
    assert meta["technology"] == technology and Path(meta["slide_path"]).is_absolute()
    vendor_to_he = np.asarray(meta["vendor_to_he"])
    np.testing.assert_allclose(apply_affine(vendor_to_he, table.obs[["x_vendor", "y_vendor"]].to_numpy()),
                               table.obs[["x_px", "y_px"]].to_numpy(), atol=1e-6)
    sdata = sd.read_zarr(path)
    assert set(sdata.images) == {IMAGE_KEY} and set(sdata.shapes) == {SHAPES_KEY}
    assert set(sdata.tables) == {TABLE_KEY}
    assert HE_SPACE in get_transformation(sdata.shapes[SHAPES_KEY], get_all=True)
    assert scale0(sdata.images[IMAGE_KEY]).shape[0] == 3


@pytest.mark.parametrize("technology", ["xenium", "visium", "visium_hd", "he_only"])
def test_every_technology_meets_the_contract(ingested, technology):
    path, table, _ = ingested[technology]
    assert_contract(path, table, technology)
    assert table.uns["pastflow"]["mpp"] == pytest.approx(0.25, rel=1e-3)
    assert (table.n_vars == 0) == (technology == "he_only")


def test_xenium_centroids_land_on_truth(ingested, simulated):
    _, table, truth = ingested["xenium"]
    truth = truth.set_index("cell_id").loc[table.obs["cell_id"]]
    err = np.hypot(table.obs["x_px"].to_numpy() - truth["x_px"].to_numpy(),
                   table.obs["y_px"].to_numpy() - truth["y_px"].to_numpy())
    assert len(table) == N_CELLS and err.max() < 2.0
    np.testing.assert_allclose(table.obs["x_vendor"], truth["x_um"], atol=1e-3)
    # Counts: the bundle's gene expression features only (control probes dropped).
    assert not table.var_names.str.startswith("NegControl").any()
    assert table.X.sum() == pytest.approx(table.obs["transcript_counts"].sum())


def test_visium_spots_sit_over_their_cells(ingested):
    _, table, truth = ingested["visium"]
    spots = table.obs.set_index("cell_id")
    under = truth[truth["spot"].isin(spots.index)]
    assert len(under) > 0
    d_px = np.hypot(spots.loc[under["spot"], "x_px"].to_numpy() - under["x_px"].to_numpy(),
                    spots.loc[under["spot"], "y_px"].to_numpy() - under["y_px"].to_numpy())
    assert d_px.max() <= 27.5 / 0.25 + 1  # a cell counts in a spot when its centre is under it
    assert table.uns["pastflow"]["vendor_space"] == "fullres_pixels"
    assert table.uns["pastflow"]["unit_diameter_um"] == pytest.approx(55)
    assert table.uns["pastflow"]["unit"] == "spot"


def test_visium_spot_diameter_comes_from_the_scale_factors(caplog):
    from pastflow.ingest.visium import spot_diameter_um

    # 130 full-resolution px of 0.45 um: the data's own 58.5 um.
    assert spot_diameter_um({"spot_diameter_fullres": 130.0}, 0.45, Path("s")) == pytest.approx(58.5)
    assert spot_diameter_um({}, 0.45, Path("s")) == 55  # none given: the nominal diameter
    with caplog.at_level("WARNING"):  # a wrong image resolution: nominal, with a warning
        assert spot_diameter_um({"spot_diameter_fullres": 130.0}, 2.0, Path("s")) == 55
    assert "260.0 um spots" in caplog.text


def test_visium_hd_cells_sit_on_their_cells(ingested):
    # The 2 um bins summed into cells (tests/unit/test_visium_hd_cells.py: accuracy, 8 um spots).
    _, table, truth = ingested["visium_hd"]
    meta = table.uns["pastflow"]
    assert meta["unit"] == "cell" and meta["bin_um"] == 2 and meta["vendor_fit_rms_px"] < 0.01
    assert len(table) == pytest.approx(N_CELLS, rel=0.15)
    # Vendor space: bin-grid microns, the simulator's tissue frame.
    d_um = cKDTree(truth[["x_um", "y_um"]].to_numpy()).query(table.obs[["x_vendor", "y_vendor"]].to_numpy())[0]
    d_px = cKDTree(truth[["x_px", "y_px"]].to_numpy()).query(table.obs[["x_px", "y_px"]].to_numpy())[0]
    assert np.median(d_um) < 1.5 and np.median(d_px) < 1.5 / 0.25


def test_he_only_detection_recall_and_precision(ingested):
    _, table, truth = ingested["he_only"]
    det = table.obs[["x_px", "y_px"]].to_numpy()
    true = truth[["x_px", "y_px"]].to_numpy()
    for radius, min_recall, min_precision in ((4.0, 0.55, 0.55), (8.0, 0.7, 0.7)):
        cost = np.full((len(true), len(det)), 1e6)
        for i, js in enumerate(cKDTree(det).query_ball_point(true, radius)):
            cost[i, js] = np.hypot(*(det[js] - true[i]).T)
        rows, cols = linear_sum_assignment(cost)
        matched = int((cost[rows, cols] < 1e6).sum())
        recall, precision = matched / len(true), matched / len(det)
        log.info("he_only within %.0f px: recall %.3f precision %.3f (%d true, %d found)",
                 radius, recall, precision, len(true), len(det))
        assert recall >= min_recall and precision >= min_precision


def test_visium_downsampled_image_scales_spots(simulated, ingested, tmp_path):
    folder = simulated["visium"]
    lowres = folder / "outs" / "spatial" / "tissue_lowres_image.png"
    factors = json.loads((folder / "outs" / "spatial" / "scalefactors_json.json").read_text())
    scalef = factors["tissue_lowres_scalef"]
    path = ingest_sample("low", "P1", "visium", tmp_path / "low.zarr", data=folder / "outs", image=lowres,
                         progress=False)
    table = ad.read_zarr(path / "tables" / TABLE_KEY)
    full = ingested["visium"][1]
    np.testing.assert_allclose(table.obs["x_px"], full.obs["x_px"] * scalef, rtol=1e-9)
    meta = table.uns["pastflow"]
    assert meta["image_scale"] == pytest.approx(scalef) and "no full-resolution image" in meta["image_note"]
    assert meta["mpp"] == pytest.approx(0.25 / scalef, rel=0.02)  # from the spot diameter


def test_xenium_spatialdata_zarr_matches_the_bundle(simulated, ingested, tmp_path):
    """The same sample converted to SpatialData first (spatialdata-io, H&E registered) ingests alike."""
    import warnings

    import spatialdata_io

    paths = sheet_paths(simulated["xenium"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.xenium(paths["data"], cells_labels=False, nucleus_labels=False,
                                      transcripts=False, morphology_focus=False, aligned_images=False)
        sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(paths["image"], paths["alignment"])
        sdata.write(tmp_path / "converted.zarr")
    path = ingest_sample("conv", "P1", "xenium", tmp_path / "conv.zarr", data=tmp_path / "converted.zarr",
                         progress=False)
    table = ad.read_zarr(path / "tables" / TABLE_KEY)
    bundle = ingested["xenium"][1]
    np.testing.assert_allclose(table.obs[["x_px", "y_px"]], bundle.obs[["x_px", "y_px"]], atol=1e-6)
    assert table.uns["pastflow"]["mpp"] == pytest.approx(0.25, rel=1e-6)
    assert list(table.var_names) == list(bundle.var_names)
    # The exported slide is the registered H&E, readable by the patches stage.
    with open_slide(table.uns["pastflow"]["slide_path"]) as slide, open_slide(paths["image"]) as original:
        assert slide.level_dimensions[0] == original.level_dimensions[0]
        np.testing.assert_array_equal(slide.read_region(0, 100, 120, 64, 64),
                                      original.read_region(0, 100, 120, 64, 64))


def test_big_slide_is_stored_downsampled(simulated, tmp_path):
    folder = simulated["he_only"]
    path = ingest_sample("small", "P1", "he_only", tmp_path / "small.zarr", image=folder / "he.tif",
                         settings=IngestSettings(max_image_px=500), progress=False)
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    sdata = sd.read_zarr(path)
    image = scale0(sdata.images[IMAGE_KEY])
    with open_slide(folder / "he.tif") as slide:
        w0, h0 = slide.level_dimensions[0]
    assert max(image.shape[1:]) <= 500
    scale = get_transformation(sdata.images[IMAGE_KEY], to_coordinate_system=HE_SPACE).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y"))
    assert scale[0, 0] * image.shape[2] == pytest.approx(w0)
    assert scale[1, 1] * image.shape[1] == pytest.approx(h0)
    assert sdata.tables[TABLE_KEY].uns["pastflow"]["he_image_downsample"] > 1


# --------------------------------------------------------------------------- bad input


def test_misaligned_xenium_fails_naming_the_csv_and_leaves_nothing(simulated, tmp_path):
    paths = sheet_paths(simulated["xenium"])
    matrix = np.loadtxt(paths["alignment"], delimiter=",")
    bad = tmp_path / "microns_alignment.csv"
    # The usual mix-up: a matrix to Xenium microns instead of morphology pixels.
    np.savetxt(bad, np.diag([0.2125, 0.2125, 1]) @ matrix, delimiter=",")
    out = tmp_path / "bad.zarr"
    with pytest.raises(InputError, match="microns instead of morphology") as err:
        ingest_sample("bad", "P1", "xenium", out, data=paths["data"], image=paths["image"], alignment=bad)
    assert err.value.path == str(bad)
    assert not out.exists() and not list(tmp_path.glob(".bad*"))


def test_failure_while_writing_leaves_no_output(simulated, tmp_path, monkeypatch):
    import pastflow.ingest.sample as sample_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sample_module, "build_sdata", broken)
    out = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_sample("x", "P1", "visium", out, **sheet_paths(simulated["visium"]), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, problem", [
    (["--technology", "merfish"], "unknown technology 'merfish'"),
    (["--technology", "visium", "--data", "{missing}", "--image", "{png}"], "{missing}: data not found"),
    (["--technology", "he_only", "--image", "{empty}"], "{empty}: image file is empty"),
    (["--technology", "he_only", "--image", "{png}"], "{png}: the slide records no microns per pixel; "
     "give it in the sample sheet column mpp (this slide) or the config key ingest.mpp"),
    (["--technology", "he_only", "--image", "{png}", "--mpp", ""], "{png}: the slide records no microns"),
    (["--technology", "xenium", "--data", "{dir}", "--image", "{png}"], "needs --alignment"),
])
def test_cli_rejects_bad_input_with_a_message(tmp_path, capsys, args, problem):
    from pastflow.cli import main

    files = {"missing": tmp_path / "nope", "empty": tmp_path / "empty.tif", "png": tmp_path / "he.png",
             "dir": tmp_path / "bundle"}
    files["empty"].touch()
    write_he_png(files["png"], (64, 64), np.array([[32.0, 32.0]]), 6)
    files["dir"].mkdir()
    (files["dir"] / "experiment.xenium").write_text("{}")
    argv = ["ingest", "--sample", "s", "--patient", "p", "--out", str(tmp_path / "o.zarr")]
    argv += [a.format(**files) for a in args]
    assert main(argv) == 2
    assert problem.format(**files) in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_cli_ingests_a_png_with_mpp(tmp_path, caplog):
    from pastflow.cli import main

    centres = np.array([[30.0, 30.0], [80.0, 40.0], [50.0, 90.0]])
    write_he_png(tmp_path / "he.png", (128, 128), centres, 8)
    out = tmp_path / "he.zarr"
    settings = tmp_path / "config.yaml"
    settings.write_text("ingest: {mpp: 0.5}\n")
    with caplog.at_level(logging.INFO, logger="pastflow.ingest.sample"):
        assert main(["ingest", "--sample", "s", "--patient", "p", "--technology", "he_only", "--data", "",
                     "--image", str(tmp_path / "he.png"), "--alignment", "",
                     "--settings", str(settings), "--out", str(out), "--no-progress"]) == 0
    table = ad.read_zarr(out / "tables" / TABLE_KEY)
    assert table.shape == (3, 0) and table.uns["pastflow"]["mpp_source"] == "config ingest.mpp"
    assert "ingested s (he_only): 3 cells x 0 genes" in caplog.text


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_cli_refuses_a_bad_mpp(tmp_path, capsys, value):
    from pastflow.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ingest", "--sample", "s", "--patient", "p", "--technology", "he_only",
              "--image", str(tmp_path / "he.png"), "--mpp", value, "--out", str(tmp_path / "o.zarr")])
    assert exit_.value.code == 2
    assert (f"argument --mpp: {value!r} is not a positive number of microns per pixel (leave it "
            "empty to use the config key ingest.mpp)") in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("config", [None, "ingest: {mpp: 2.0}\n"])
def test_cli_mpp_from_the_sheet_overrides_the_config(tmp_path, config):
    """``--mpp`` (the sheet column ``mpp``) is this sample's resolution; the config's
    ``ingest.mpp`` (here a wrong 2.0 um/px, or none) is not used."""
    from pastflow.cli import main

    centres = np.array([[30.0, 30.0], [80.0, 40.0], [50.0, 90.0]])
    write_he_png(tmp_path / "he.png", (128, 128), centres, 8)
    out = tmp_path / "he.zarr"
    argv = ["ingest", "--sample", "s", "--patient", "p", "--technology", "he_only", "--data", "",
            "--image", str(tmp_path / "he.png"), "--alignment", "", "--mpp", "0.5",
            "--out", str(out), "--no-progress"]
    if config:
        (tmp_path / "config.yaml").write_text(config)
        argv += ["--settings", str(tmp_path / "config.yaml")]
    assert main(argv) == 0
    meta = ad.read_zarr(out / "tables" / TABLE_KEY).uns["pastflow"]
    assert meta["mpp"] == pytest.approx(0.5)
    assert meta["mpp_source"] == "sample sheet column mpp"
