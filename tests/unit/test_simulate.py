"""The simulator: patient biology, expression, layout, H&E rendering and the vendor formats,
each format checked by the real reader (spatialdata-io, OpenSlide, tifffile)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pastflow.errors import InputError
from pastflow.simulate.clinical import patient_parameters, simulate_clinical
from pastflow.simulate.cohort import simulate_sample, write_benchmark_slide
from pastflow.simulate.biology import (
    CELL_TYPES,
    build_expression_model,
    build_shape_bank,
    nuclei_overlap,
    sample_counts,
)
from pastflow.simulate.clinical import clinical_tables, log_hazard
from pastflow.simulate.cohort import LIBRARY_SIZE
from pastflow.simulate.genes import PROGRAMS, REQUIRED_MARKERS, gene_panel
from pastflow.simulate.slide import simulate_slide
from pastflow.simulate.tiff import ArrayTiles, pyramid_shapes, write_pyramid

N_CELLS = 500
PATIENT = "P007"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """One small sample per technology, all from one patient."""
    out = tmp_path_factory.mktemp("simulated")
    for tech in ("xenium", "visium", "visium_hd", "he_only"):
        simulate_sample(out, f"S_{tech}", PATIENT, tech, n_cells=N_CELLS, seed=3, progress=False)
    return out


def _slide_for(tech: str):
    """The section simulate_sample drew for sample S_<tech> (the simulation is deterministic)."""
    from pastflow.simulate.cohort import ROTATION_DEG

    return simulate_slide(f"S_{tech}", PATIENT, N_CELLS, seed=3, rotation_deg=ROTATION_DEG[tech])


# ----------------------------------------------------------------------------- patients


def test_patient_parameters_depend_only_on_seed_and_id():
    a = patient_parameters("P1", cohort_seed=5)
    assert patient_parameters("P1", cohort_seed=5) == a
    assert patient_parameters("P1", cohort_seed=6) != a
    # The clinical table of a patient does not depend on who else is in the cohort.
    c1, _ = clinical_tables(["P1", "P2"], 5)
    c2, _ = clinical_tables(["P9", "P1"], 5)
    assert c1.iloc[0].to_dict() == c2.iloc[1].to_dict()


def test_survival_follows_the_true_hazard():
    lifelines = pytest.importorskip("lifelines")
    clinical, truth = clinical_tables([f"P{i:04d}" for i in range(800)], cohort_seed=1)
    assert (clinical["os_time"] > 0).all()
    assert set(clinical["os_event"]) == {0, 1}
    assert clinical["stage"].between(1, 4).all()
    p = patient_parameters("P0003", 1)
    assert truth.loc[3, "log_hazard"] == pytest.approx(
        log_hazard(p.proliferation_fraction, p.immune_infiltration, p.stage, p.age))
    df = pd.DataFrame({"T": clinical["os_time"], "E": clinical["os_event"], "lh": truth["log_hazard"]})
    fit = lifelines.CoxPHFitter().fit(df, "T", "E")
    # Proportional hazards with the true log-hazard as covariate: coefficient 1.
    assert fit.params_["lh"] == pytest.approx(1.0, abs=0.2)


def test_simulate_clinical_writes_both_tables(tmp_path):
    clinical_path, hazard_path = simulate_clinical(tmp_path, ["A", "B", "C"], cohort_seed=2)
    clinical = pd.read_csv(clinical_path, sep="\t")
    hazard = pd.read_csv(hazard_path, sep="\t")
    assert list(clinical.columns) == ["patient", "os_time", "os_event", "age", "stage"]
    assert list(hazard.columns[:2]) == ["patient", "log_hazard"]
    assert clinical["patient"].tolist() == hazard["patient"].tolist() == ["A", "B", "C"]


def test_simulate_clinical_rejects_duplicates_without_output(tmp_path):
    with pytest.raises(InputError, match="duplicate patient ids: A"):
        simulate_clinical(tmp_path, ["A", "B", "A"])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- biology


def test_gene_panel_has_markers_hallmark_genes_and_filler():
    panel = gene_panel(300)
    assert len(panel) == len(set(panel)) == 300
    assert panel[:len(REQUIRED_MARKERS)] == list(REQUIRED_MARKERS)
    # Every programme is represented, with real Hallmark symbols (e.g. G2M / EMT members).
    for name, genes in PROGRAMS.items():
        assert sum(g in panel for g in genes) >= min(len(genes), 5), name
    assert {"TOP2A", "CDK1", "COL3A1", "STAT1"} <= set(panel)
    assert gene_panel(400)[-1].startswith("FILLER_")
    with pytest.raises(ValueError):
        gene_panel(10)


def test_expression_programmes_mark_their_cell_types():
    rng = np.random.default_rng(0)
    er_pos = next(patient_parameters(f"E{i}") for i in range(100) if patient_parameters(f"E{i}").er_positive)
    er_neg = next(patient_parameters(f"E{i}") for i in range(100) if not patient_parameters(f"E{i}").er_positive)
    genes = gene_panel(300)
    model = build_expression_model(genes, er_pos, rng).to_frame()
    assert np.allclose(model.sum(axis=1), 1.0)
    assert model.loc["tumour", "EPCAM"] > 10 * model.loc["t_cell", "EPCAM"]
    assert model.loc["t_cell", "CD3E"] > 10 * model.loc["tumour", "CD3E"]
    assert model.loc["b_cell", "MS4A1"] > 10 * model.loc["macrophage", "MS4A1"]
    assert model.loc["macrophage", "CD68"] > 10 * model.loc["fibroblast", "CD68"]
    assert model.loc["fibroblast", "COL1A1"] > 10 * model.loc["t_cell", "COL1A1"]
    assert model.loc["endothelial", "PECAM1"] > 10 * model.loc["b_cell", "PECAM1"]
    assert model.loc["tumour_proliferating", "MKI67"] > 5 * model.loc["tumour", "MKI67"]
    neg = build_expression_model(genes, er_neg, np.random.default_rng(0)).to_frame()
    assert model.loc["tumour", "ESR1"] > 5 * neg.loc["tumour", "ESR1"]


@pytest.mark.parametrize("dispersion", [0.0, 0.5])
def test_counts_are_negative_binomial(dispersion):
    rng = np.random.default_rng(1)
    model = build_expression_model(gene_panel(50), patient_parameters("X"), rng)
    kind = np.zeros(20000, dtype=int)
    counts = sample_counts(model, kind, np.full(20000, 400.0), rng, dispersion).toarray()
    mu = 400.0 * model.profiles[0]
    g = int(np.argmax(mu))  # a highly expressed gene: tight moment estimates
    assert counts[:, g].mean() == pytest.approx(mu[g], rel=0.03)
    assert counts[:, g].var() == pytest.approx(mu[g] + dispersion * mu[g] ** 2, rel=0.1)


# ----------------------------------------------------------------------------- layout


def test_cells_fill_the_tissue_without_overlapping_nuclei():
    slide = simulate_slide("L1", "P2", 1500, seed=1)
    cells = slide.cells
    assert len(cells) == 1500
    from scipy.spatial import cKDTree

    xy = cells[["x_um", "y_um"]].to_numpy()
    pairs = cKDTree(xy).query_pairs(2 * slide.bank.bounding_radius.max(), output_type="ndarray")
    s = cells["shape"].to_numpy()
    overlap = nuclei_overlap(slide.bank, s[pairs[:, 0]], s[pairs[:, 1]],
                             xy[pairs[:, 1], 0] - xy[pairs[:, 0], 0], xy[pairs[:, 1], 1] - xy[pairs[:, 0], 1],
                             margin=0.0)
    assert not overlap.any()
    # Cell types follow their domains.
    tumour = cells[cells["cell_type"] == "tumour"]
    assert (tumour["domain"] == "tumour").mean() > 0.9
    fib = cells[cells["cell_type"] == "fibroblast"]
    assert (fib["domain"] == "stroma").mean() > 0.7
    assert set(cells["cell_type"]) == set(CELL_TYPES)


def test_nucleus_overlap_test_is_exact_for_ellipses():
    bank = build_shape_bank(np.random.default_rng(0), per_type=4)
    fib = bank.shapes_of("fibroblast")[0]  # long thin nucleus along bank.orientation
    a, b = bank.semi_axes[fib]
    t = bank.orientation[fib]
    side = np.array([-np.sin(t), np.cos(t)])  # across the nucleus
    along = np.array([np.cos(t), np.sin(t)])
    s = np.array([fib])
    # Side by side, 2b + 0.5 um apart: no overlap, although well inside the bounding circles.
    d = side * (2 * b * 1.15 + 0.5)
    assert not nuclei_overlap(bank, s, s, np.array([d[0]]), np.array([d[1]]), margin=0.0)[0]
    d = along * a  # end to end, half overlapping
    assert nuclei_overlap(bank, s, s, np.array([d[0]]), np.array([d[1]]), margin=0.0)[0]


# ----------------------------------------------------------------------------- rendering


def _hematoxylin(img: np.ndarray) -> np.ndarray:
    """Hematoxylin density per pixel by colour deconvolution with the renderer's stain vectors."""
    from pastflow.simulate.render import EOSIN, GLASS_RGB, HEMATOXYLIN

    od = -np.log((img.astype(float) + 0.5) / GLASS_RGB)
    return (od.reshape(-1, 3) @ np.linalg.pinv(np.stack([HEMATOXYLIN, EOSIN], axis=1)).T)[:, 0].reshape(img.shape[:2])


def _ring_mean(h: np.ndarray, x: np.ndarray, y: np.ndarray, r_px: float) -> np.ndarray:
    """Mean of ``h`` on a circle of radius ``r_px`` (r_px = 0: the centre pixel) around each point."""
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    xx = np.rint(x[:, None] + r_px * np.cos(ang)).astype(int)
    yy = np.rint(y[:, None] + r_px * np.sin(ang)).astype(int)
    return h[yy, xx].mean(axis=1)


def test_rendered_cells_look_like_their_types():
    from skimage import measure

    slide = simulate_slide("R1", "P3", 1200, seed=2, margin_um=20)
    r = slide.renderer(tile=256)
    img = np.concatenate([np.concatenate([r.render_tile(ty, tx) for tx in range(r.n_tiles_x)], axis=1)
                          for ty in range(r.n_tiles_y)])
    h = _hematoxylin(img)
    mpp = slide.geometry.mpp
    c = slide.cells
    c = c[(c.x_px > 60) & (c.y_px > 60) & (c.x_px < img.shape[1] - 60) & (c.y_px < img.shape[0] - 60)]
    xy = {t: (c.x_px[c.cell_type == t].to_numpy(), c.y_px[c.cell_type == t].to_numpy())
          for t in ("tumour", "t_cell", "fibroblast")}
    # Nuclei are blue-purple: blue above red above green at the centre.
    for t, (x, y) in xy.items():
        rgb = img[np.rint(y).astype(int), np.rint(x).astype(int)].mean(axis=0)
        assert rgb[2] > rgb[0] > rgb[1], t
    # Lymphocytes: small and dark; carcinoma nuclei: large and vesicular (pale centre).
    centre = {t: np.median(_ring_mean(h, x, y, 0)) for t, (x, y) in xy.items()}
    ring = {t: np.median(_ring_mean(h, x, y, 3.6 / mpp)) for t, (x, y) in xy.items()}
    assert centre["t_cell"] > 1.4 * centre["tumour"]
    assert ring["tumour"] > 1.5 * ring["t_cell"]
    # Fibroblast nuclei are spindles, lymphocyte nuclei round.
    labels = measure.label(h > 0.6)

    def eccentricity(t: str) -> float:
        x, y = xy[t]
        ids = labels[np.rint(y).astype(int), np.rint(x).astype(int)]
        props = {p.label: p.eccentricity for p in measure.regionprops(labels)}
        return float(np.median([props[i] for i in ids if i]))

    assert eccentricity("fibroblast") > 0.9
    assert eccentricity("t_cell") < 0.6
    # Stroma is eosin-pink, glass outside the tissue near white.
    stroma = (c.domain == "stroma") & (c.cell_type == "fibroblast")
    sx, sy = c.x_px[stroma].to_numpy(), c.y_px[stroma].to_numpy()
    pink = img[np.rint(sy + 8 / mpp).astype(int), np.rint(sx).astype(int)].mean(axis=0)
    assert pink[0] > pink[2] > pink[1]
    assert img[:10, :10].mean() > 230


# ----------------------------------------------------------------------------- TIFF pyramids


@pytest.mark.parametrize("shape", [(1300, 2100, 3), (1100, 700)])
def test_pyramid_round_trips_losslessly(tmp_path, shape):
    import tifffile

    rng = np.random.default_rng(0)
    dtype = np.uint8 if len(shape) == 3 else np.uint16
    img = rng.integers(0, 200, size=shape).astype(dtype)
    path = tmp_path / "x.ome.tif"
    levels = write_pyramid(path, ArrayTiles(img, tile=256), 0.5, layout="ome", compression="zlib",
                           min_size=400, progress=False)
    assert levels == pyramid_shapes(*shape[:2], min_size=400)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert [lv.shape[:2] for lv in series.levels] == levels
        np.testing.assert_array_equal(series.levels[0].asarray(), img)
        # Level 1 is the 2x2 mean (rounded) of level 0.
        h, w = shape[0] // 2, shape[1] // 2
        expected = (img[:2 * h, :2 * w].reshape(h, 2, w, 2, *shape[2:]).astype(int).sum(axis=(1, 3)) + 2) // 4
        np.testing.assert_array_equal(series.levels[1].asarray()[:h, :w], expected)
        assert max(levels[-1]) < 400 <= max(levels[-2])
    assert [p.name for p in tmp_path.iterdir()] == ["x.ome.tif"]  # no spill files left


def test_benchmark_slide_is_a_generic_tiff_openslide_reads(tmp_path):
    import openslide
    import tifffile

    tif, cells = write_benchmark_slide(tmp_path / "b.tif", tmp_path / "b.parquet", n_cells=2500,
                                       size_px=2600, progress=False)
    slide = openslide.OpenSlide(tif)
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert slide.dimensions == (2600, 2600)
    assert slide.level_dimensions == ((2600, 2600), (1300, 1300), (650, 650))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    with tifffile.TiffFile(tif) as t:
        assert len(t.series[0].levels) == slide.level_count
    table = pd.read_parquet(cells)
    assert list(table.columns) == ["cell_id", "x_px", "y_px", "cell_type"]
    assert len(table) == 2500 and table["cell_id"].is_unique
    assert table["x_px"].between(0, 2600).all()


# ----------------------------------------------------------------------------- samples


def test_sample_layout_and_truth(cohort):
    expected = {
        "xenium": ["xenium/he.ome.tif", "xenium/he_imagealignment.csv", "xenium/experiment.xenium"],
        "visium": ["he.tif", "outs/filtered_feature_bc_matrix.h5", "outs/spatial/tissue_positions.csv"],
        "visium_hd": ["he.tif", "outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5"],
        "he_only": ["he.tif"],
    }
    for tech, files in expected.items():
        d = cohort / f"S_{tech}"
        for f in files + ["truth/cells.parquet", "truth/sample.json", "truth/programs.tsv"]:
            assert (d / f).is_file(), f"{tech}: {f}"
        meta = json.loads((d / "truth/sample.json").read_text())
        assert meta["technology"] == tech and meta["patient"] == PATIENT and meta["n_cells"] == N_CELLS
        assert sum(meta["composition"].values()) == pytest.approx(1.0, abs=1e-3)
        assert (d / meta["sheet"]["image"]).is_file()
        cells = pd.read_parquet(d / "truth/cells.parquet")
        assert len(cells) == N_CELLS and cells["cell_id"].is_unique
        assert {"cell_id", "cell_type", "domain", "x_px", "y_px", "x_um", "y_um"} <= set(cells.columns)
        programs = pd.read_csv(d / "truth/programs.tsv", sep="\t", index_col=0)
        assert programs.shape == (len(CELL_TYPES) + 1, 300)
    assert not [p for p in cohort.iterdir() if ".tmp-" in p.name]


def test_xenium_bundle_reads_with_spatialdata_io(cohort):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    bundle = cohort / "S_xenium" / "xenium"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.xenium(bundle)
    table = sdata["table"]
    slide = _slide_for("xenium")
    counts = slide.counts(LIBRARY_SIZE["xenium"], 0.1)
    truth = pd.read_parquet(cohort / "S_xenium" / "truth/cells.parquet")
    assert table.obs["cell_id"].tolist() == truth["cell_id"].tolist()
    assert table.var_names.tolist() == gene_panel(300)  # negative control probes dropped (gex_only)
    np.testing.assert_array_equal(table.X.toarray(), counts.toarray())
    # Counts are the decoded transcripts (qv >= 20) assigned to each cell.
    tx = pd.read_parquet(bundle / "transcripts.parquet")
    tx = tx[(tx["qv"] >= 20) & (tx["cell_id"] != "UNASSIGNED")]
    assert len(tx) == counts.sum()
    assert {"cell_labels", "nucleus_labels"} <= set(sdata.labels)
    assert {"cell_boundaries", "nucleus_boundaries"} <= set(sdata.shapes)
    # The nucleus label under each cell centroid is that cell's.
    labels = sdata.labels["nucleus_labels"]["scale0"]["image"].values
    xy = table.obsm["spatial"] / 0.2125
    hit = labels[np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)]
    assert (hit == np.arange(1, len(table) + 1)).mean() > 0.99


def test_xenium_alignment_places_cells_on_their_nuclei(cohort):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from spatialdata.transformations import get_transformation

    bundle = cohort / "S_xenium" / "xenium"
    image = spatialdata_io.xenium_aligned_image(bundle / "he.ome.tif", bundle / "he_imagealignment.csv")
    he_to_global = get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    assert not np.allclose(he_to_global[:2, :2], np.eye(2))  # H&E and Xenium spaces differ
    cells = pd.read_parquet(bundle / "cells.parquet")
    truth = pd.read_parquet(cohort / "S_xenium" / "truth/cells.parquet")
    morph_px = np.column_stack([cells["x_centroid"] / 0.2125, cells["y_centroid"] / 0.2125,
                                np.ones(len(cells))])
    he_px = morph_px @ np.linalg.inv(he_to_global).T
    err = np.hypot(he_px[:, 0] - truth["x_px"], he_px[:, 1] - truth["y_px"])
    assert err.max() < 0.01
    # And there is a hematoxylin-dark nucleus at that pixel of the H&E.
    rgb = np.asarray(image.transpose("y", "x", "c").values)  # single-scale DataArray
    lymph = truth["cell_type"].isin(["t_cell", "b_cell"]).to_numpy()
    at = rgb[np.rint(he_px[lymph, 1]).astype(int), np.rint(he_px[lymph, 0]).astype(int)].astype(int)
    assert (at.sum(axis=1) < 400).mean() > 0.9
    assert (at[:, 2] > at[:, 1]).mean() > 0.9


def test_xenium_label_expansion_by_blocks_matches_the_whole_image(monkeypatch):
    from skimage import segmentation

    import pastflow.simulate.xenium as xenium

    rng = np.random.default_rng(0)
    nuclei = np.zeros((1300, 1100), dtype=np.uint32)
    for label, (r, c) in enumerate(rng.integers(0, (1300, 700), size=(300, 2)), start=1):
        nuclei[r:r + 9, c:c + 7] = label  # the right part stays glass
    monkeypatch.setattr(xenium, "EXPAND_BLOCK", 256)
    blocks = xenium._expand_labels(nuclei, 23.5)
    whole = segmentation.expand_labels(nuclei[::2, ::2], distance=23.5 / 2)
    whole = np.repeat(np.repeat(whole, 2, axis=0), 2, axis=1)
    whole = np.where(nuclei > 0, nuclei, whole)
    assert (blocks == whole).mean() > 0.999  # equal up to ties between equidistant nuclei
    assert (blocks[nuclei > 0] == nuclei[nuclei > 0]).all() and not blocks[:, 1000:].any()


def test_xenium_whole_slide_paths_keep_labels_and_transcripts(tmp_path, monkeypatch):
    """Past their thresholds (tiny here) the label images live in an unlinked scratch file and
    the transcripts are written in runs of cells: the same labels, and the transcripts are
    still the counts, inside their cells, with unique consecutive ids."""
    import pyarrow.parquet as pq

    import pastflow.simulate.xenium as xenium

    slide = simulate_slide("S_scale", PATIENT, 300, seed=5)
    in_memory = xenium._label_masks(slide, scratch=tmp_path)
    monkeypatch.setattr(xenium, "LABELS_IN_MEMORY_BYTES", 0)
    paged = xenium._label_masks(slide, scratch=tmp_path)
    assert isinstance(paged[0], np.memmap) and isinstance(paged[1], np.memmap)
    assert not isinstance(in_memory[0], np.memmap)
    for a, b in zip(in_memory, paged):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.iterdir())  # nothing left behind

    counts = slide.counts(LIBRARY_SIZE["xenium"], 0.1)
    monkeypatch.setattr(xenium, "TRANSCRIPT_CHUNK", int(counts.sum()) // 4)
    path = tmp_path / "transcripts.parquet"
    rows, nuclear = xenium._write_transcripts(path, slide, counts, slide.expression.genes, *paged)
    assert pq.ParquetFile(path).metadata.num_row_groups >= 4
    tx = pd.read_parquet(path)
    assert len(tx) == rows and (np.diff(tx["transcript_id"].to_numpy().astype(np.int64)) == 1).all()
    cells = tx[tx["cell_id"] != "UNASSIGNED"]
    per_cell = cells["cell_id"].value_counts().reindex(slide.cells["cell_id"], fill_value=0)
    np.testing.assert_array_equal(per_cell.to_numpy(), np.asarray(counts.sum(axis=1)).ravel())
    assert nuclear.sum() == cells["overlaps_nucleus"].sum() > 0
    row = pd.Series(np.arange(len(slide.cells)), index=slide.cells["cell_id"])[cells["cell_id"]]
    ii, jj = (np.rint(cells[f"{axis}_location"].to_numpy() / xenium.PIXEL_SIZE).astype(int)
              for axis in "yx")
    h, w = paged[1].shape
    label = paged[1][np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1)]
    assert (label == row.to_numpy() + 1).mean() > 0.95  # inside their own cell


def test_xenium_dapi_tiles_blur_seamlessly():
    from scipy import ndimage

    from pastflow.simulate.xenium import DAPI_BLUR_PX, _DapiTiles

    slide = _slide_for("xenium")
    nuclei = np.zeros((700, 900), dtype=np.uint32)
    nuclei[100:600:40, 50:850:40] = 1 + np.arange(13 * 20).reshape(13, 20) % len(slide.cells)
    nuclei = ndimage.grey_dilation(nuclei, size=(9, 9))
    dapi = _DapiTiles(slide, nuclei, tile=256)
    tiled = np.block([[dapi.render_tile(ty, tx) for tx in range(4)] for ty in range(3)])[:700, :900]
    # The same image computed whole from the same position-indexed (periodic) noise.
    period = dapi.noise[:dapi.PERIOD, :dapi.PERIOD]

    def noise(shift):
        rows, cols = np.arange(700) + shift, np.arange(900) + shift
        return period.take(rows, axis=0, mode="wrap").take(cols, axis=1, mode="wrap")

    whole = ndimage.gaussian_filter(dapi.level[nuclei] * (1 + 0.8 * noise(0)), DAPI_BLUR_PX)
    whole += 60 + 15 * noise(dapi.PERIOD // 2)
    np.testing.assert_array_equal(tiled, np.clip(whole, 0, 65535).astype(np.uint16))


def test_visium_outs_reads_with_spatialdata_io(cohort):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    d = cohort / "S_visium"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.visium(d / "outs", dataset_id="S_visium", fullres_image_file=d / "he.tif")
    table = sdata["table"]
    positions = pd.read_csv(d / "outs/spatial/tissue_positions.csv")
    assert list(positions.columns) == ["barcode", "in_tissue", "array_row", "array_col",
                                       "pxl_row_in_fullres", "pxl_col_in_fullres"]
    assert table.n_obs == positions["in_tissue"].sum() > 0
    # Spot pixels land where the lattice (tissue microns) maps onto the H&E.
    slide = _slide_for("visium")
    from pastflow.simulate.visium import spot_lattice

    lattice = spot_lattice(slide.width_um, slide.height_um)
    x_px, y_px = slide.geometry.to_px(lattice["x_um"], lattice["y_um"])
    assert np.abs(positions["pxl_col_in_fullres"] - x_px).max() <= 0.5
    assert np.abs(positions["pxl_row_in_fullres"] - y_px).max() <= 0.5
    # Adjacent spots in a row are 100 um apart on the H&E.
    same_row = positions.sort_values(["array_row", "array_col"]).groupby("array_row").head(2)
    first = same_row.groupby("array_row").agg(list).iloc[0]
    pitch = np.hypot(np.diff(first["pxl_col_in_fullres"]), np.diff(first["pxl_row_in_fullres"]))[0]
    assert pitch * slide.geometry.mpp == pytest.approx(100.0, abs=0.5)
    # A spot's counts are the sum of the counts of the cells under it.
    truth = pd.read_parquet(d / "truth/cells.parquet")
    counts = slide.counts(LIBRARY_SIZE["visium"], 0.1).toarray()
    spot = table.obs_names[np.argmax(np.asarray(table.X.sum(axis=1)).ravel())]
    under = truth["spot"].to_numpy() == spot
    assert under.sum() >= 3
    np.testing.assert_array_equal(table[spot].X.toarray().ravel(), counts[under].sum(axis=0))
    full = sdata.images["S_visium_full_image"]["scale0"]["image"]
    assert full.shape[1:] == (slide.geometry.height_px, slide.geometry.width_px)


def test_visium_hd_outs_reads_with_spatialdata_io(cohort):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    d = cohort / "S_visium_hd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = spatialdata_io.visium_hd(d / "outs", dataset_id="S_visium_hd", load_segmentations_only=False,
                                         fullres_image_file=d / "he.tif")
    assert {"square_008um", "square_016um"} <= set(sdata.tables)
    t8, t16 = sdata.tables["square_008um"], sdata.tables["square_016um"]
    slide = _slide_for("visium_hd")
    total = slide.counts(LIBRARY_SIZE["visium_hd"], 0.1).sum()
    # Nearly every transcript lands in an in-tissue bin; 16 um bins hold what 8 um bins hold.
    assert 0.95 * total <= t8.X.sum() <= total
    assert t16.X.sum() == pytest.approx(t8.X.sum(), rel=0.02)
    # The bin holding a cell centre sits over it on the H&E (within half a bin diagonal).
    truth = pd.read_parquet(d / "truth/cells.parquet")
    bins = pd.DataFrame(t8.obsm["spatial"], index=t8.obs_names, columns=["bin_x", "bin_y"])
    both = truth.merge(bins, left_on="bin_008um", right_index=True)
    assert len(both) > 0.9 * len(truth)
    err = np.hypot(both["bin_x"] - both["x_px"], both["bin_y"] - both["y_px"])
    assert err.max() * slide.geometry.mpp <= 8 * np.sqrt(2) / 2 + 0.01


def test_he_only_slide_opens_in_openslide(cohort):
    import openslide

    slide = openslide.OpenSlide(cohort / "S_he_only" / "he.tif")
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert slide.level_count >= 2


# ----------------------------------------------------------------------------- failure modes, CLI


def test_bad_arguments_raise_input_error_and_leave_nothing(tmp_path):
    with pytest.raises(InputError, match="cannot simulate technology 'legacy_st'"):
        simulate_sample(tmp_path, "S1", "P1", "legacy_st")
    with pytest.raises(InputError, match="sample id"):
        simulate_sample(tmp_path, "../S1", "P1", "he_only")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_no_partial_sample(tmp_path, monkeypatch):
    import pastflow.simulate.cohort as cohort_mod

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_mod, "write_truth", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_sample(tmp_path, "S1", "P1", "he_only", n_cells=200, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_clinical_and_reports_bad_input(tmp_path, capsys):
    from pastflow.simulate import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["simulate", "clinical", "--out", str(tmp_path), "--patients", "P1", "P2"])
    args.func(args)
    assert len(pd.read_csv(tmp_path / "clinical.tsv", sep="\t")) == 2
    args = parser.parse_args(["simulate", "sample", "--out", str(tmp_path), "--sample", "a b",
                              "--patient", "P1", "--technology", "he_only"])
    with pytest.raises(InputError):
        args.func(args)
