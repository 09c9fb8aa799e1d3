"""pastflow.ingest on the real public data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pastflow.contracts import OBS_COLUMNS, TABLE_KEY
from pastflow.ingest.sample import ingest_sample
from pastflow.ingest.common import in_image
from pastflow.ingest.legacy_st import read_legacy_st
from pastflow.ingest.xenium_zarr import is_control, read_spatialdata, rebuild_counts
from pastflow.slide import open_slide

pytestmark = pytest.mark.realdata

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
XENIUM_ZARR = DATA / "xenium_breast_subset" / "xenium_sp_subset.zarr"
HEART = DATA / "visium_heart_subset" / "spaceranger_1.0.0"
BLOCK_A = DATA / "visium_breast_blockA"
HER2ST = DATA / "her2st"
IMAGES = DATA / "images"
# Selected spots that have a counts row, per HER2ST section (a few selected spots have none).
HER2ST_SPOTS = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (real-data tests need ../shared/data)")
    return path


def ingest(tmp_path: Path, name: str, technology: str, **paths) -> ad.AnnData:
    out = ingest_sample(name, "P", technology, tmp_path / f"{name}.zarr", progress=False, **paths)
    return ad.read_zarr(out / "tables" / TABLE_KEY)


# --------------------------------------------------------------------------- Xenium (SpatialData zarr)


@pytest.fixture(scope="module")
def xenium_table(tmp_path_factory):
    return ingest(tmp_path_factory.mktemp("xenium"), "xbr", "xenium", data=need(XENIUM_ZARR))


def test_xenium_zarr_gets_its_313_panel_genes_back(xenium_table):
    table = xenium_table
    assert table.shape == (122, 313)
    assert not is_control(table.var_names).any()
    assert {"ERBB2", "ESR1", "KRT8", "ACTA2", "PTPRC"} <= set(table.var_names)
    # X is the published matrix: its row sums are Xenium's own transcript counts.
    np.testing.assert_array_equal(np.asarray(table.X.sum(axis=1)).ravel(), table.obs["transcript_counts"])
    assert table.uns["pastflow"]["counts_source"] == "table X, gene names from points/transcripts"
    assert table.obs["control_transcripts"].sum() == table.uns["pastflow"]["n_control_transcripts"] > 0


def test_xenium_zarr_rebuilt_counts_agree_with_the_published_matrix():
    sdata = read_spatialdata(need(XENIUM_ZARR))
    table = sdata.tables["table"]
    transcripts = sdata.points["transcripts"][["feature_name", "cell_id", "qv"]].compute()
    counts, genes, _ = rebuild_counts(transcripts, table.obs["cell_id"].to_numpy())
    published = table.X.toarray()
    rebuilt = counts.toarray()
    assert len(genes) == 313
    # A crop only loses transcripts of border cells: never more counts, and equal inside.
    assert (rebuilt <= published).all()
    exact = (rebuilt == published).all(axis=1)
    assert exact.sum() >= 100


def test_xenium_zarr_places_cells_on_the_exported_he(xenium_table):
    meta = xenium_table.uns["pastflow"]
    assert meta["vendor_space"] == "microns" and meta["xenium_pixel_size_um"] == pytest.approx(0.2125)
    assert meta["mpp"] == pytest.approx(0.3639, abs=1e-3)  # 1.7125 morphology px of 0.2125 um
    with open_slide(meta["slide_path"]) as slide:
        assert slide.backend == "tifffile" and slide.level_dimensions[0] == (527, 448)
        assert slide.level_count == 5 and slide.mpp == pytest.approx(meta["mpp"])
        xy = xenium_table.obs[["x_px", "y_px"]].to_numpy()
        assert in_image(xy, slide.level_dimensions[0]).all()
        # Cells sit on hematoxylin: darker than the slide on average.
        rgb = slide.read_region(0, 0, 0, 527, 448).astype(float).mean(axis=-1)
    at_cells = rgb[np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)]
    assert at_cells.mean() < rgb.mean() - 10


# --------------------------------------------------------------------------- Visium


def test_visium_spaceranger_1_with_only_the_lowres_image(tmp_path):
    table = ingest(tmp_path, "heart", "visium", data=need(HEART),
                   image=HEART / "spatial" / "tissue_lowres_image.png")
    meta = table.uns["pastflow"]
    assert table.shape == (100, 100) and list(table.obs.columns[:len(OBS_COLUMNS)]) == list(OBS_COLUMNS)
    assert meta["image_scale"] == pytest.approx(0.045004502)
    assert "tissue_lowres_image.png" in meta["image_note"]
    # 55 um spots are 89.43 full-resolution px; the lowres image is 0.045 of that.
    assert meta["mpp"] == pytest.approx(55 / 89.42751063343188 / 0.045004502, rel=1e-6)
    np.testing.assert_allclose(table.obs["x_px"], table.obs["x_vendor"] * 0.045004502)
    assert in_image(table.obs[["x_px", "y_px"]].to_numpy(), (600, 600)).all()
    assert meta["he_blank"] is False and meta["x_is_raw_counts"] is True


def test_visium_blank_placeholder_image_is_flagged(tmp_path):
    table = ingest(tmp_path, "heart_hires", "visium", data=need(HEART),
                   image=HEART / "spatial" / "tissue_hires_image.png")
    assert table.uns["pastflow"]["he_blank"] is True
    assert table.uns["pastflow"]["image_scale"] == pytest.approx(0.150015)


def test_visium_anndata_with_image_coordinates(tmp_path):
    table = ingest(tmp_path, "blockA", "visium", data=need(BLOCK_A / "test_data.h5"),
                   image=BLOCK_A / "test_image.jpg")
    source = ad.read_h5ad(BLOCK_A / "test_data.h5")
    meta = table.uns["pastflow"]
    assert table.shape == (316, 100)
    np.testing.assert_allclose(table.obs[["x_px", "y_px"]], source.obs[["imagecol", "imagerow"]])
    np.testing.assert_allclose(table.obs[["x_vendor", "y_vendor"]], source.obsm["spatial"])
    # Full-resolution pixels -> this image: the hires scale factor, found by the fit.
    assert np.asarray(meta["vendor_to_he"])[0, 0] == pytest.approx(0.08250825, rel=1e-6)
    assert meta["mpp"] == pytest.approx(55 / 177.4829519178534 / 0.08250825, rel=1e-4)
    # The published X is scaled (z-scores): kept, but flagged. The image is a white placeholder.
    assert meta["x_is_raw_counts"] is False and meta["he_blank"] is True


# --------------------------------------------------------------------------- legacy ST (HER2ST)


@pytest.mark.parametrize("section", sorted(HER2ST_SPOTS))
def test_her2st_sections_read_with_fitted_resolution(section):
    folder = need(HER2ST / section)
    parts = read_legacy_st(folder / f"{section}.tsv.gz", next(folder.glob("*_HE_*.jpg")),
                           folder / f"{section}_selection.tsv")
    assert len(parts.cell_ids) == HER2ST_SPOTS[section]
    assert parts.counts.shape[1] > 15_000
    assert 0.68 < parts.mpp < 0.70  # 200 um pitch over ~290 px
    assert parts.uns["pitch_fit_rms_px"] < 1.0
    assert all("x" in i for i in parts.cell_ids)


def test_her2st_full_ingest(tmp_path):
    folder = need(HER2ST / "C2")
    table = ingest(tmp_path, "C2", "legacy_st", data=folder / "C2.tsv.gz", image=folder / "5714_HE_BT_C2.jpg",
                   alignment=folder / "C2_selection.tsv")
    selection = pd.read_csv(folder / "C2_selection.tsv", sep="\t").set_index(["x", "y"])
    meta = table.uns["pastflow"]
    assert table.shape[0] == 187 and meta["unit_diameter_um"] == 100
    assert meta["vendor_space"] == "fullres_pixels"
    first = table.obs.iloc[0]
    x, y = map(int, first["cell_id"].split("x"))
    assert (first["x_px"], first["y_px"]) == tuple(selection.loc[(x, y), ["pixel_x", "pixel_y"]])
    counts = pd.read_csv(folder / "C2.tsv.gz", sep="\t", index_col=0)
    expected = counts.loc[table.obs["cell_id"], table.var_names].to_numpy()
    np.testing.assert_array_equal(table.X.toarray(), expected)
    assert meta["he_image_downsample"] == pytest.approx(2.0, rel=0.01)  # 9.9k px JPEG stored at 1/2


# --------------------------------------------------------------------------- H&E only


def test_svs_through_openslide_finds_a_plausible_number_of_nuclei(tmp_path):
    slide_path = need(IMAGES / "CMU-1-Small-Region.svs")
    with open_slide(slide_path) as slide:
        assert slide.backend == "openslide" and slide.mpp == pytest.approx(0.499)
    table = ingest(tmp_path, "cmu", "he_only", image=slide_path)
    # 2220 x 2967 px at 0.5 um/px, about a third of it tissue: some thousands of nuclei.
    assert 1000 < table.n_obs < 5000 and table.n_vars == 0
    assert 15 < table.obs["nucleus_area_um2"].median() < 80


def test_ome_tiff_through_tifffile(tmp_path):
    slide_path = need(IMAGES / "OS-1-detail.ome.tif")
    with open_slide(slide_path) as slide:
        assert slide.backend == "tifffile" and slide.mpp == pytest.approx(0.2271, abs=1e-4)
    table = ingest(tmp_path, "os1", "he_only", image=slide_path)
    assert table.n_obs > 50 and table.uns["pastflow"]["mpp_source"] == "image metadata"
