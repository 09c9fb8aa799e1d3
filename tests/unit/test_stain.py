"""The stain stage: panel, calibration, binning / H-scores, deconvolution and the DAB pixel
H-score (on real IHC images), the virtual stain round trip, pyramids, agreement, and the CLIs
(stain-calibrate, stain, stain-images, stain-agreement) end to end on a small synthetic slide."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pastflow.cli import main
from pastflow.errors import InputError
from pastflow.stain.agreement import (AGREEMENT_COLUMNS, INTERVAL_COLUMNS, agreement_values,
                                      pair_hscores, read_hscores, region_class,
                                      summarise_agreement,
                                      write_agreement)
from pastflow.stain.calibrate import (CUTOFF_COLUMNS, CUTS, calibrate_cutoffs, calibrate_marker,
                                      read_cutoffs)
from pastflow.stain.deconvolve import (DAB_THRESHOLDS, combine_stains, dab_hscore,
                                       hematoxylin_only, separate_stains)
from pastflow.settings import project_path
from pastflow.stain.panel import Marker, marker_scores, read_panel
from pastflow.stain.pyramid import read_thumbnail_level, write_stain_pyramid
from pastflow.stain.render import LEVEL_OD, VirtualStainTiles
from pastflow.stain.score import HSCORE_COLUMNS, bin_levels, grid_regions, hscore_table
from pastflow.stain.settings import StainSettings

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGES = SHARED / "images"


DEFAULT_PANEL = project_path(StainSettings().panel)  # the settings' default: the shipped panel


def write_panel(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_settings(path: Path, **stain) -> Path:
    """A settings file with section ``stain`` (keys not given keep their defaults)."""
    path.write_text(yaml.safe_dump({"stain": stain}))
    return path


# ----------------------------------------------------------------------------------- panel


def test_default_panel_maps_the_issue_markers_to_their_genes():
    panel = {m.name: m for m in read_panel(DEFAULT_PANEL)}
    assert panel["HER2"].genes == ("ERBB2",) and panel["Ki67"].genes == ("MKI67",)
    assert panel["CD3"].genes == ("CD3D", "CD3E", "CD3G")
    assert panel["pan-cytokeratin"].genes == ("KRT8", "KRT18", "KRT19")
    assert panel["PD-L1"].genes == ("CD274",)
    assert panel["Ki67"].compartment == "nuclear" and panel["CD20"].compartment == "membrane"
    assert len(panel) == 10 and all(m.cutoffs is None for m in panel.values())


def test_default_panel_genes_are_in_the_simulated_panel():
    from pastflow.simulate.genes import gene_panel

    simulated = set(gene_panel(20))  # the required markers: in every simulated panel
    for marker in read_panel(DEFAULT_PANEL):
        assert set(marker.genes) <= simulated, marker.name


@pytest.mark.parametrize("text, problem", [
    ("markers: {}", "expected a mapping"),
    ("markers: {Ki67: {genes: []}}", "non-empty list"),
    ("markers: {Ki67: {genes: [MKI67], compartment: nucleus}}", "compartment 'nucleus'"),
    ("markers: {Ki67: {genes: [MKI67], cutoffs: [1, 0.5, 2]}}", "three increasing"),
    ("markers: {Ki67: {genes: [MKI67], colour: brown}}", "unknown keys"),
])
def test_bad_panels_name_the_file_and_the_problem(tmp_path, text, problem):
    path = write_panel(tmp_path / "panel.yaml", text)
    with pytest.raises(InputError, match=problem) as err:
        read_panel(path)
    assert "panel.yaml" in str(err.value)


def test_marker_scores_average_present_genes_and_skip_absent_markers(caplog):
    X = np.array([[1.0, 3.0, 8.0], [0.0, 1.0, 2.0]])
    panel = [Marker("A", ("g1", "g2", "missing")), Marker("B", ("g3",)), Marker("C", ("nope",))]
    with caplog.at_level(logging.WARNING):
        scores = marker_scores(X, ["g1", "g2", "g3"], panel, source="t.h5ad")
    assert list(scores.columns) == ["A", "B"]
    np.testing.assert_allclose(scores["A"], [2.0, 0.5])
    np.testing.assert_allclose(scores["B"], [8.0, 2.0])
    assert "marker C skipped" in caplog.text and "t.h5ad" in caplog.text


# --------------------------------------------------------------------- binning and H-score


def test_bin_levels_counts_cutoffs_strictly_exceeded():
    levels = bin_levels([-1, 0.0, 0.5, 1.0, 1.01, 2.5, 9, np.nan], (0.0, 1.0, 2.0))
    assert levels.tolist() == [0, 0, 1, 1, 2, 3, 3, 0]
    with pytest.raises(ValueError, match="increasing"):
        bin_levels([1.0], (1.0, 1.0, 2.0))


def test_hscore_is_weighted_percentage_per_slide_and_region():
    levels = pd.DataFrame({"Ki67": [0, 1, 2, 3, 3, 3, 0, 0]})
    regions = np.array(["r1c1"] * 4 + ["r1c2"] * 3 + ["r2c1"])
    table = hscore_table(levels, regions, sample="s", source="predicted", min_cells=2)
    assert list(table.columns) == list(HSCORE_COLUMNS)
    rows = table.set_index("region")
    assert set(rows.index) == {"slide", "r1c1", "r1c2"}  # r2c1 has 1 < 2 cells
    # slide: 3 x 0, 1 x 1+, 1 x 2+, 3 x 3+ of 8 -> (12.5 + 2 x 12.5 + 3 x 37.5) = 150
    assert rows.loc["slide", "hscore"] == pytest.approx(150.0)
    assert rows.loc["slide", "pct_positive"] == pytest.approx(62.5)
    assert rows.loc["r1c1", "hscore"] == pytest.approx(150.0)  # 0,1,2,3 -> 25 + 50 + 75
    assert rows.loc["r1c2", "hscore"] == pytest.approx(200.0)  # 3,3,0
    assert rows.loc["r1c2", "n_cells"] == 3


def test_hscore_table_memory_grows_with_cells_not_cells_times_regions():
    """A whole slide holds thousands of grid regions: the table is made from one sort of the
    cells, not from a cells-long mask per region (2,000 regions x 40,000 cells = 80 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 40_000
    levels = pd.DataFrame({"Ki67": rng.integers(0, 4, n).astype(np.int8)})
    regions = grid_regions(rng.uniform(0, 250.0 * 45, (n, 2)), 250.0)  # 45 x 45 regions
    regions[:100] = ""  # in no region
    tracemalloc.start()
    table = hscore_table(levels, regions, sample="s", source="predicted", min_cells=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table) == 1 + 45 * 45
    assert peak < 10e6, f"{peak / 1e6:.0f} MB"
    rows = table.set_index("region")
    assert rows.loc["slide", "n_cells"] == n and rows["n_cells"].iloc[1:].sum() == n - 100
    inside = regions == "r7c9"
    expected = np.bincount(levels["Ki67"].to_numpy()[inside], minlength=4) @ np.arange(4)
    assert rows.loc["r7c9", "hscore"] == pytest.approx(100.0 * expected / inside.sum())


def test_grid_regions_are_one_based_row_column_ids():
    ids = grid_regions(np.array([[10.0, 10.0], [260.0, 10.0], [10.0, 510.0]]), 250.0)
    assert ids.tolist() == ["r1c1", "r1c2", "r3c1"]


# ---------------------------------------------------------------------------- calibration


def test_calibration_splits_bimodal_scores_and_uses_positive_tertiles():
    rng = np.random.default_rng(0)
    negative = rng.normal(0.1, 0.05, 900).clip(0)
    positive = rng.uniform(1.5, 2.5, 300)
    cut_1, cut_2, cut_3 = calibrate_marker(np.concatenate([negative, positive]))
    assert negative.max() < cut_1 < positive.min()
    # tertiles of U(1.5, 2.5): 1.83, 2.17
    assert cut_2 == pytest.approx(1.5 + 1 / 3, abs=0.06)
    assert cut_3 == pytest.approx(1.5 + 2 / 3, abs=0.06)
    with pytest.raises(ValueError, match="no positive"):
        calibrate_marker(np.zeros(10))


def test_panel_cutoffs_win_and_markers_without_genes_are_dropped(tmp_path):
    rng = np.random.default_rng(1)
    x = np.where(rng.random((400, 2)) < 0.3, rng.uniform(1, 3, (400, 2)), 0).astype(np.float32)
    table = ad.AnnData(x, var=pd.DataFrame(index=["MKI67", "CD3D"]))
    panel = [Marker("Ki67", ("MKI67",)), Marker("CD3", ("CD3D",), cutoffs=(0.1, 0.2, 0.3)),
             Marker("CD20", ("MS4A1",))]
    table = calibrate_cutoffs([table], panel)
    assert list(table.columns) == list(CUTOFF_COLUMNS)
    cuts = table[table["applies_to"] == "measured"].set_index("marker")
    assert list(cuts.index) == ["Ki67", "CD3"]
    assert cuts.loc["CD3", "source"] == "panel" and cuts.loc["CD3", "cut_1"] == 0.1
    assert cuts.loc["Ki67", "source"].startswith("calibrated")
    assert 0 < cuts.loc["Ki67", "cut_1"] < 1 < cuts.loc["Ki67", "cut_2"] < cuts.loc["Ki67", "cut_3"]
    # No predictions given: the predicted rows repeat the measured cut-offs, and say so.
    predicted = table[table["applies_to"] == "predicted"].set_index("marker")
    assert predicted.loc["Ki67", CUTS].tolist() == cuts.loc["Ki67", CUTS].tolist()
    assert predicted.loc["Ki67", "source"] == "measured cut-offs (no predictions given)"


def shrunk_predictions(n=2000, seed=0):
    """Measured Ki67 scores of two training slides (bimodal, 30% positive) and a regression
    head's predictions of them: shrunk halfway to the mean plus noise, on cells in another
    order and with cells QC dropped (predicted, not measured)."""
    rng = np.random.default_rng(seed)
    tables, predictions = [], []
    for slide in range(2):
        positive = rng.random(n) < 0.3
        score = np.where(positive, rng.uniform(1.0, 3.0, n), rng.gamma(1.0, 0.05, n))
        ids = np.array([f"s{slide}c{i}" for i in range(n)])
        shrunk = 0.5 * score + 0.5 * score.mean() + rng.normal(0, 0.05, n)
        order = rng.permutation(n)
        tables.append(ad.AnnData(score[:, None].astype(np.float32),
                                 obs=pd.DataFrame({"cell_id": ids}, index=ids),
                                 var=pd.DataFrame(index=["MKI67"])))
        extra = np.array([f"s{slide}x{i}" for i in range(50)])  # predicted, not in QC
        predictions.append(ad.AnnData(
            np.concatenate([shrunk[order], np.full(50, 9.0)])[:, None].astype(np.float32),
            obs=pd.DataFrame({"cell_id": np.concatenate([ids[order], extra])},
                             index=np.concatenate([ids[order], extra])),
            var=pd.DataFrame(index=["MKI67"])))
    return tables, predictions


def test_predicted_cutoffs_are_fitted_on_the_predictions_for_the_training_cells():
    """Issue 17: measured cut-offs applied to shrunk predictions mis-call the levels; cut-offs
    fitted on the predictions call each level as often as the measurement does."""
    tables, predictions = shrunk_predictions()
    panel = [Marker("Ki67", ("MKI67",))]
    table = calibrate_cutoffs(tables, panel, predictions=predictions).set_index("applies_to")
    measured = table.loc["measured", CUTS].to_numpy(float)
    predicted = table.loc["predicted", CUTS].to_numpy(float)
    assert table.loc["predicted", "source"] == ("fitted on the predictions for 4000 cells of 2 "
                                                "training slides")
    truth = np.concatenate([bin_levels(t.X[:, 0], measured) for t in tables])
    by_id = {cid: v for p in predictions for cid, v in zip(p.obs["cell_id"], p.X[:, 0])}
    shrunk = np.array([by_id[c] for t in tables for c in t.obs["cell_id"]])
    share = lambda levels: np.bincount(levels, minlength=4) / len(levels)  # noqa: E731
    calibrated, naive = bin_levels(shrunk, predicted), bin_levels(shrunk, measured)
    assert np.abs(share(calibrated) - share(truth)).max() < 0.01
    assert np.abs(share(naive) - share(truth)).max() > 0.1  # what measured cut-offs did
    assert np.mean(calibrated == truth) > 0.8 > np.mean(naive == truth)
    with pytest.raises(InputError, match="2 QC tables"):
        calibrate_cutoffs(tables, panel, predictions=predictions[:1])


def test_within_slide_markers_are_fitted_on_each_slide(tmp_path):
    panel_path = write_panel(tmp_path / "p.yaml", "markers:\n"
                             "  Ki67: {genes: [MKI67], calibration: within_slide}\n")
    panel = read_panel(panel_path)
    assert panel[0].calibration == "within_slide"
    tables, predictions = shrunk_predictions(n=300)
    table = calibrate_cutoffs(tables, panel, predictions=predictions)
    assert set(table["source"]) == {"within_slide"} and table[CUTS].isna().all().all()
    table.to_csv(tmp_path / "cutoffs.tsv", sep="\t", index=False)
    assert len(read_cutoffs(tmp_path / "cutoffs.tsv")) == 2  # NaN cut-offs accepted here only
    for text, problem in (("{genes: [MKI67], calibration: slide}", "calibration 'slide'"),
                          ("{genes: [MKI67], calibration: training, cutoffs: [1, 2, 3]}",
                           "not both")):
        with pytest.raises(InputError, match=problem):
            read_panel(write_panel(tmp_path / "bad.yaml", f"markers:\n  Ki67: {text}\n"))


def test_read_cutoffs_rejects_non_increasing(tmp_path):
    path = tmp_path / "cutoffs.tsv"
    pd.DataFrame({"marker": ["Ki67"], "cut_1": [1.0], "cut_2": [0.5], "cut_3": [2.0],
                  "source": ["panel"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match="cutoffs.tsv.*Ki67"):
        read_cutoffs(path)


# --------------------------------------------------------------------------- deconvolution


def test_stain_separation_round_trips_and_drops_eosin():
    od = np.zeros((4, 4, 3), np.float32)
    od[..., 0], od[..., 1], od[..., 2] = 0.3, 0.5, np.linspace(0, 1.2, 16).reshape(4, 4)
    back = separate_stains(combine_stains(od))
    np.testing.assert_allclose(back, od, atol=0.02)  # uint8 rounding only
    rgb = combine_stains(od)
    hema_rgb, hema = hematoxylin_only(rgb)
    np.testing.assert_allclose(hema, 0.3, atol=0.02)
    left = separate_stains(hema_rgb)
    assert np.abs(left[..., 1:]).max() < 0.02  # no eosin, no DAB left


def test_dab_hscore_classes_pixels_by_od_thresholds():
    od = np.zeros((1, 4, 3), np.float32)
    od[0, :, 0] = 0.2  # hematoxylin everywhere: every pixel is tissue
    od[0, :, 2] = [0.0, 0.18, 0.42, 0.9]
    score = dab_hscore(combine_stains(od))
    assert score.n_pixels == 4
    assert (score.pct_0, score.pct_1, score.pct_2, score.pct_3) == (25.0, 25.0, 25.0, 25.0)
    assert score.hscore == pytest.approx(150.0)
    white = np.full((5, 5, 3), 255, np.uint8)
    assert dab_hscore(white).n_pixels == 0  # glass is not scored


@pytest.mark.realdata
@pytest.mark.parametrize("image, brown, blue", [
    # (file, brown-stained region, blue-only region) as (y0, y1, x0, x1); regions picked by
    # eye on crops: skimage's IHC (membranous DAB on a gland vs stroma) and OS-2 Ki67 (a
    # cluster of DAB-positive nuclei vs hematoxylin-only nuclei).
    ("skimage_ihc.png", (40, 200, 30, 200), (280, 360, 180, 260)),
    ("OS-2-ndpi.ome.tif", (1780, 1960, 760, 920), (600, 740, 1310, 1450)),
])
def test_dab_hscore_on_real_ihc_separates_brown_from_blue(image, brown, blue):
    path = IMAGES / image
    if not path.is_file():
        pytest.skip(f"{path} not available")
    if path.suffix == ".png":
        rgb = np.asarray(Image.open(path).convert("RGB"))
    else:
        import tifffile

        rgb = tifffile.imread(path)
    b, n = (rgb[y0:y1, x0:x1] for y0, y1, x0, x1 in (brown, blue))
    brown_score, blue_score = dab_hscore(b), dab_hscore(n)
    assert brown_score.hscore > blue_score.hscore + 90
    assert blue_score.hscore < 20 and blue_score.pct_positive < 12
    assert brown_score.pct_3 > 20  # strongly stained nuclei / membranes reach 3+


# ------------------------------------------------------------------ virtual stain round trip


def test_virtual_stain_levels_read_back_monotone_through_dab_hscore():
    """Four cells at levels 0..3 on an H&E-like background: the pixel H-score of each cell's
    nucleus disc in the virtual stain rises with the level and sits in that level's class."""
    rng = np.random.default_rng(3)
    he = np.empty((64, 256, 3), np.uint8)
    he[:] = (230, 170, 210)  # eosin-pink stroma
    he = (he + rng.integers(-6, 6, he.shape)).clip(0, 255).astype(np.uint8)
    centers = np.array([[32.0, 32.0], [96.0, 32.0], [160.0, 32.0], [224.0, 32.0]])
    yy, xx = np.mgrid[:64, :256]
    for cx, cy in centers:  # purple nuclei under every cell
        he[np.hypot(xx - cx, yy - cy) < 7] = (120, 80, 160)
    tiles = VirtualStainTiles(he, centers, np.arange(4), "nuclear", radius_px=20, tile=64)
    stained = tiles.render()
    assert stained.shape == he.shape
    scores = []
    for cx, cy in centers:
        disc = np.hypot(xx - cx, yy - cy) < 6  # inside the 7 px nucleus blob
        scores.append(dab_hscore(stained, mask=disc))
    hs = [s.hscore for s in scores]
    assert hs == sorted(hs) and hs[3] > hs[1] + 150
    assert hs[0] < 5  # level 0: counterstain only
    for level, s in enumerate(scores):  # each cell's pixels land in its own class
        assert [s.pct_0, s.pct_1, s.pct_2, s.pct_3][level] > 90
    # Away from the cells the virtual stain is the H&E's hematoxylin only: no DAB, no eosin.
    background = separate_stains(stained[:, 50:76])
    assert background[..., 2].max() < 0.05 and background[..., 1].max() < 0.05


def test_level_od_sits_inside_the_dab_classes():
    classes = np.searchsorted(DAB_THRESHOLDS, LEVEL_OD, side="right")
    assert classes.tolist() == [0, 1, 2, 3]


def test_membrane_blob_is_a_ring_with_a_lighter_fill():
    he = np.full((64, 64, 3), 240, np.uint8)
    tiles = VirtualStainTiles(he, np.array([[32.0, 32.0]]), [3], "membrane", radius_px=10,
                              tile=64)
    dab = tiles.dab_tile(0, 0)
    assert dab[32, 42] == pytest.approx(LEVEL_OD[3])  # on the ring
    assert 0.2 * LEVEL_OD[3] < dab[32, 32] < 0.6 * LEVEL_OD[3]  # centre: fill
    assert dab[32, 50] == 0  # outside the cell


# --------------------------------------------------------------------------------- pyramid


def test_virtual_stain_pyramid_opens_in_openslide_with_levels_and_mpp(tmp_path):
    import openslide

    rng = np.random.default_rng(0)
    # Smooth content (a pink gradient): JPEG's error on it is small enough to compare pixels.
    ramp = np.linspace(0, 1, 700)[None, :, None]
    he = np.broadcast_to((250 - 60 * ramp) * np.array([0.95, 0.75, 0.9]), (600, 700, 3))
    he = np.ascontiguousarray(he).astype(np.uint8)
    centers = rng.uniform(20, 580, (200, 2))
    tiles = VirtualStainTiles(he, centers, rng.integers(0, 4, 200), "cytoplasmic", 8, tile=256)
    path = tmp_path / "virtual_Ki67.tif"
    shapes = write_stain_pyramid(path, tiles, mpp=0.5)
    assert shapes[0] == (600, 700) and len(shapes) >= 2
    slide = openslide.OpenSlide(path)
    assert slide.level_count == len(shapes) > 1
    assert slide.dimensions == (700, 600)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    region = np.asarray(slide.read_region((0, 0), 0, (256, 256)).convert("RGB")).astype(int)
    expected = tiles.render_tile(0, 0).astype(int)
    assert np.abs(region - expected).mean() < 4  # JPEG, quality 90
    assert read_thumbnail_level(path, min_side=300).shape[:2] == (300, 350)
    assert [p.name for p in tmp_path.iterdir()] == ["virtual_Ki67.tif"]  # no temporaries


# ------------------------------------------------------------------------------- agreement


def level_shares(h: float) -> list[float]:
    """``pct_0..3`` of a region with H-score ``h``, its cells at two neighbouring levels."""
    low = min(int(h // 100), 2)
    pct = [0.0] * 4
    pct[low + 1] = h - 100 * low
    pct[low] = 100 - pct[low + 1]
    return pct


def hscore_rows(sample, marker, regions, predicted, measured):
    rows = []
    for source, values in (("predicted", predicted), ("measured", measured)):
        for region, h in zip(regions, values):
            pct = level_shares(h)
            rows.append({"sample": sample, "marker": marker, "region": region, "source": source,
                         "cells": "measured", "n_cells": 50, "pct_0": pct[0], "pct_1": pct[1],
                         "pct_2": pct[2], "pct_3": pct[3],
                         "pct_positive": sum(pct[1:]), "hscore": h})
    return rows


def test_agreement_pairs_sources_and_reports_r_per_level(tmp_path):
    regions = ["slide", "r1c1", "r1c2", "r2c1", "r2c2"]
    table = pd.DataFrame(
        hscore_rows("a", "CD3", regions, [40, 10, 20, 30, 100], [50, 12, 22, 35, 110])
        + hscore_rows("b", "CD3", regions, [60, 5, 50, 60, 120], [55, 4, 45, 60, 118])
        + hscore_rows("a", "HER2", regions, [0, 0, 0, 0, 0], [5, 1, 2, 3, 9]))
    pairs = pair_hscores(table)
    assert len(pairs) == 15 and set(pairs["level"]) == {"slide", "region"}
    summary = summarise_agreement(pairs).set_index(["marker", "level"])
    assert summary.loc[("CD3", "region"), "n"] == 8
    assert summary.loc[("CD3", "region"), "pearson_r"] > 0.98
    assert np.isnan(summary.loc[("CD3", "slide"), "pearson_r"])  # 2 slides: too few
    assert summary.loc[("CD3", "slide"), "reason"] == ("2 slides scored both ways: too few for "
                                                       "r or kappa (needs 3)")
    assert np.isnan(summary.loc[("HER2", "region"), "pearson_r"])  # constant prediction
    assert summary.loc[("HER2", "region"), "reason"] == (
        "r undefined: predicted H-score 0 in every region; kappa undefined: class 0 in every "
        "region, measured and predicted (agreement, but none beyond chance to measure)")
    assert summary.loc[("HER2", "region"), "bias"] == pytest.approx(-3.75)
    cd3 = summary.loc[("CD3", "region")]
    assert cd3["reason"] == ""
    assert cd3["pearson_ci_low"] < cd3["pearson_r"] <= cd3["pearson_ci_high"]
    # Region classes (the highest level > 10% of cells reach), H-scores 10 20 30 100 and
    # 5 50 60 120 predicted, 12 22 35 110 and 4 45 60 118 measured:
    from sklearn.metrics import cohen_kappa_score

    assert cd3["kappa"] == pytest.approx(cohen_kappa_score(
        [0, 1, 1, 1, 0, 1, 1, 2], [1, 1, 1, 1, 0, 1, 1, 2], weights="quadratic"))

    paths = []
    for sample, group in table.groupby("sample"):
        paths.append(tmp_path / f"{sample}.tsv")
        group.to_csv(paths[-1], sep="\t", index=False)
    out = [tmp_path / n for n in ("agreement.tsv", "details.tsv", "ba.png", "scatter.png")]
    write_agreement(paths, *out)
    written = pd.read_csv(out[0], sep="\t")
    assert list(written.columns) == list(AGREEMENT_COLUMNS + INTERVAL_COLUMNS)
    # NaN only with a reason.
    undefined = written["pearson_r"].isna() | written["kappa"].isna()
    assert (written.loc[undefined, "reason"].str.len() > 0).all()
    assert all(p.stat().st_size > 0 for p in out)


def test_kappa_is_cohens_quadratic_kappa_of_the_classes_with_an_interval():
    from sklearn.metrics import cohen_kappa_score

    from pastflow.predict.metrics import quadratic_kappa

    # The highest level more than 10% of the cells reach: 1+ needs > 10% at 1+ or above.
    assert region_class([10, 11, 50, 0, 5], [0, 0, 40, 11, 3], [0, 0, 5, 0, 3]).tolist() == [
        0, 1, 2, 2, 1]
    rng = np.random.default_rng(0)
    measured = rng.uniform(0, 300, 60)
    predicted = np.clip(measured + rng.normal(0, 60, 60), 0, 300)
    a, b = (region_class(*np.array([level_shares(h) for h in x])[:, 1:].T)
            for x in (measured, predicted))
    assert quadratic_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    values = agreement_values(predicted, measured, b, a, "region", n_boot=500)
    assert values["kappa"] == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert values["kappa_ci_low"] < values["kappa"] < values["kappa_ci_high"]
    assert values["pearson_ci_low"] < values["pearson_r"] < values["pearson_ci_high"]
    assert values["reason"] == ""
    # One side constant: r is undefined, kappa is 0 (no agreement beyond chance), with the why.
    flat = agreement_values(np.full(5, 120.0), np.array([0, 100, 200, 250, 300.0]),
                            np.full(5, 2), np.array([0, 1, 2, 3, 3]), "slide")
    assert np.isnan(flat["pearson_r"]) and flat["kappa"] == pytest.approx(0.0)
    assert flat["reason"] == "r undefined: predicted H-score 120 in every slide"


def test_agreement_without_measured_rows_is_an_input_error(tmp_path):
    path = tmp_path / "h.tsv"
    pd.DataFrame(hscore_rows("a", "CD3", ["slide"], [1], [2])[:1]).to_csv(path, sep="\t",
                                                                          index=False)
    out = [tmp_path / n for n in ("agreement.tsv", "details.tsv", "ba.png", "scatter.png")]
    with pytest.raises(InputError, match="predicted and measured"):
        write_agreement([path], *out)
    assert not any(p.exists() for p in out)


# ------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    """A 480 x 480 px slide (0.5 um/px) with 144 cells on a grid, its patch store, and
    prediction / QC tables where the left half is CD3-high and Ki67 follows the rows."""
    from pastflow.patches.store import build_patch_store

    root = tmp_path_factory.mktemp("stain")
    he = np.full((480, 480, 3), (235, 180, 215), np.uint8)
    xs = np.arange(20.0, 480, 40.0)
    xy = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    yy, xx = np.mgrid[:480, :480]
    for cx, cy in xy:
        he[np.hypot(xx - cx, yy - cy) < 5] = (110, 70, 150)
    Image.fromarray(he).save(root / "he.png")
    ids = [f"c{i}" for i in range(len(xy))]
    build_patch_store(root / "he.png", ids, xy, root / "store.h5", slide_mpp=0.5,
                      target_mpp=0.5, patch_px=32, progress=False)
    genes = ["CD3D", "CD3E", "CD3G", "MKI67", "ACTB"]
    left = xy[:, 0] < 240
    x = np.zeros((len(xy), len(genes)), np.float32)
    x[:, :3] = np.where(left, 2.0, 0.0)[:, None]
    x[:, 3] = np.floor(xy[:, 1] / 40.0) % 4 * 0.6  # Ki67 score 0, 0.6, 1.2, 1.8 by row
    obs = pd.DataFrame({"cell_id": ids}, index=ids)
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(root / "predict.h5ad")
    measured = x.copy()
    measured[:, 3] = np.floor(xy[:, 1] / 40.0) % 4 * 0.6 + 0.05  # same bins
    # QC dropped the bottom two rows of cells (24 of 144).
    qc = ad.AnnData(measured[:120], obs=obs.iloc[:120].copy(), var=pd.DataFrame(index=genes))
    qc.uns["pastflow"] = {"unit_diameter_um": 10.0}
    qc.write_h5ad(root / "qc.h5ad")
    write_panel(root / "panel.yaml", "markers:\n"
                "  Ki67: {genes: [MKI67], compartment: nuclear, cutoffs: [0.3, 0.9, 1.5]}\n"
                "  CD3: {genes: [CD3D, CD3E, CD3G], compartment: membrane}\n"
                "  CD20: {genes: [MS4A1], compartment: membrane}\n")
    return root


def calibrate(root: Path, tmp_path: Path) -> Path:
    cutoffs = tmp_path / "cutoffs.tsv"
    assert main(["stain-calibrate", "--tables", str(root / "qc.h5ad"), "--predictions",
                 str(root / "predict.h5ad"), "--panel", str(root / "panel.yaml"), "--out",
                 str(cutoffs), "--no-progress"]) == 0
    return cutoffs


def stain_args(root: Path, cutoffs: Path, settings: Path, out: Path, *extra: str) -> list[str]:
    return ["stain", "--prediction", str(root / "predict.h5ad"), "--store",
            str(root / "store.h5"), "--cutoffs", str(cutoffs), "--table", str(root / "qc.h5ad"),
            "--panel", str(root / "panel.yaml"), "--settings", str(settings), *extra,
            "--out-dir", str(out)]


def images_args(root: Path, settings: Path, out: Path, *extra: str) -> list[str]:
    return ["stain-images", "--cells", str(out / "cells.tsv.gz"), "--hscores",
            str(out / "hscores.tsv"), "--store", str(root / "store.h5"), "--table",
            str(root / "qc.h5ad"), "--panel", str(root / "panel.yaml"), "--settings",
            str(settings), *extra, "--out-dir", str(out), "--no-progress"]


def read_rgb(path: Path) -> np.ndarray:
    import openslide

    slide = openslide.OpenSlide(path)
    return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def test_cli_calibrates_stains_and_scores_a_sample(small_sample, tmp_path):
    import openslide

    root = small_sample
    cutoffs = calibrate(root, tmp_path)
    table = read_cutoffs(cutoffs)
    assert sorted(zip(table["marker"], table["applies_to"])) == [
        ("CD3", "measured"), ("CD3", "predicted"), ("Ki67", "measured"), ("Ki67", "predicted")]
    cuts = table[table["applies_to"] == "measured"].set_index("marker")
    assert list(cuts.index) == ["Ki67", "CD3"]  # CD20: no gene in the table
    assert cuts.loc["Ki67", "source"] == "panel"
    assert 0 < cuts.loc["CD3", "cut_1"] < 2.0
    fitted = table[table["applies_to"] == "predicted"].set_index("marker")
    assert fitted.loc["CD3", "source"].startswith("fitted on the predictions for 120 cells")

    out = tmp_path / "sample"
    settings = write_settings(tmp_path / "settings.yaml", images=["Ki67", "CD20"], grid_um=60,
                              min_region_cells=5)
    assert main(stain_args(root, cutoffs, settings, out, "--sample", "s1")) == 0
    # stain scores only: the images are stain-images' job.
    assert sorted(p.name for p in out.iterdir()) == ["cells.tsv.gz", "hscores.tsv"]
    h = pd.read_csv(out / "hscores.tsv", sep="\t").set_index(
        ["marker", "region", "source", "cells"])
    # Ki67 rows cycle 0, 1+, 2+, 3+: over all 12 rows 25 % each -> H-score 150; over the 10
    # rows that passed QC 30/30/20/20 % -> 130, the same predicted and measured.
    assert h.loc[("Ki67", "slide", "predicted", "all"), "hscore"] == pytest.approx(150.0)
    assert h.loc[("Ki67", "slide", "predicted", "measured"), "hscore"] == pytest.approx(130.0)
    assert h.loc[("Ki67", "slide", "measured", "measured"), "hscore"] == pytest.approx(130.0)
    assert h.loc[("Ki67", "slide", "measured", "measured"), "n_cells"] == 120
    assert ("Ki67", "slide", "measured", "all") not in h.index
    # Each row says which cut-offs binned it.
    assert (h.xs("Ki67", level="marker")["calibration"] == "panel").all()
    assert h.loc[("Ki67", "slide", "predicted", "all"), "cut_1"] == pytest.approx(0.3)
    assert h.xs(("CD3", "predicted"), level=("marker", "source"))["calibration"].str.startswith(
        "fitted on the predictions").all()
    assert h.xs(("CD3", "measured"), level=("marker", "source"))["calibration"].str.startswith(
        "calibrated on 1 training slides").all()
    # 240 um slide, 60 um grid: 4 x 4 regions of 9 cells; CD3 fills the left two columns.
    regions = h.xs(("CD3", "predicted", "all"), level=("marker", "source", "cells")).drop("slide")
    assert len(regions) == 16 and (regions["n_cells"] == 9).all()
    left = regions.index.str.endswith(("c1", "c2"))
    assert (regions.loc[left, "pct_positive"] == 100).all()
    assert (regions.loc[~left, "pct_positive"] == 0).all()
    cells = pd.read_csv(out / "cells.tsv.gz", sep="\t")
    assert len(cells) == 144 and {"Ki67_predicted_level", "CD3_measured_level"} <= set(cells)

    # The images, from what stain wrote; the sample's name comes from hscores.tsv.
    assert main(images_args(root, settings, out)) == 0
    for marker in ("Ki67", "CD20"):  # CD20 has no genes: rendered as counterstain only
        slide = openslide.OpenSlide(out / f"virtual_{marker}.tif")
        assert slide.level_count > 1 and slide.dimensions == (480, 480)
        assert slide.properties["tiff.ImageDescription"].endswith(f"{marker} of s1")
    ki67 = read_rgb(out / "virtual_Ki67.tif")
    assert dab_hscore(ki67).pct_3 > dab_hscore(read_rgb(out / "virtual_CD20.tif")).pct_3 + 1
    assert (out / "thumbnails.jpg").stat().st_size > 10_000
    assert not (out / "virtual_CD3.tif").exists()  # not in stain.images

    # Predicted and measured levels agree cell for cell here: r = 1 over regions.
    report = [tmp_path / n for n in ("agreement.tsv", "details.tsv", "ba.png", "scatter.png")]
    assert main(["stain-agreement", "--hscores", str(out / "hscores.tsv"), "--out",
                 str(report[0]), "--details", str(report[1]), "--bland-altman", str(report[2]),
                 "--scatter", str(report[3])]) == 0
    agreement = pd.read_csv(report[0], sep="\t").set_index(["marker", "level"])
    assert agreement.loc[("Ki67", "region"), "pearson_r"] == pytest.approx(1.0)
    assert agreement.loc[("Ki67", "region"), "n"] == 12  # 16 regions, 4 lost most cells to QC

    # A marker outside the panel is the user's error, reported without output, by both.
    bad_settings = write_settings(tmp_path / "bad.yaml", images=["PD-L1"])
    bad = tmp_path / "bad"
    assert main(stain_args(root, cutoffs, bad_settings, bad)) == 2
    assert not bad.exists()
    assert main(images_args(root, bad_settings, out)) == 2
    assert not (out / "virtual_PD-L1.tif").exists()


def test_within_slide_cutoffs_are_fitted_on_the_slide_and_written_beside_the_hscores(
        small_sample, tmp_path):
    root = small_sample
    panel = write_panel(tmp_path / "panel.yaml", "markers:\n"
                        "  CD3: {genes: [CD3D, CD3E, CD3G], calibration: within_slide}\n")
    cutoffs = tmp_path / "cutoffs.tsv"
    assert main(["stain-calibrate", "--tables", str(root / "qc.h5ad"), "--panel", str(panel),
                 "--out", str(cutoffs), "--no-progress"]) == 0
    out = tmp_path / "sample"
    settings = write_settings(tmp_path / "settings.yaml", images=["CD3"], grid_um=60,
                              min_region_cells=5)
    args = stain_args(root, cutoffs, settings, out)
    args[args.index("--panel") + 1] = str(panel)
    assert main(args) == 0
    h = pd.read_csv(out / "hscores.tsv", sep="\t").set_index(["region", "source", "cells"])
    assert h.loc[("slide", "predicted", "all"), "calibration"] == (
        "within_slide: fitted on this slide's 144 predicted scores")
    assert h.loc[("slide", "measured", "measured"), "calibration"] == (
        "within_slide: fitted on this slide's 120 measured scores")
    assert 0 < h.loc[("slide", "predicted", "all"), "cut_1"] < 2.0  # Otsu between 0 and 2
    assert h.loc[("slide", "predicted", "all"), "pct_positive"] == pytest.approx(50.0)


def test_stain_images_draws_the_levels_stain_wrote(small_sample, tmp_path):
    """stain-images scores nothing: it draws the levels of cells.tsv.gz, so changing them
    there changes the picture, and the prediction table is not read at all."""
    root = small_sample
    cutoffs = calibrate(root, tmp_path)
    out = tmp_path / "s"
    settings = write_settings(tmp_path / "settings.yaml", images=["CD3"])
    assert main(stain_args(root, cutoffs, settings, out)) == 0
    assert main(images_args(root, settings, out)) == 0
    left = read_rgb(out / "virtual_CD3.tif")
    cells = pd.read_csv(out / "cells.tsv.gz", sep="\t", dtype={"cell_id": str})
    assert set(cells.loc[cells["x_um"] < 120, "CD3_predicted_level"]) == {1}  # left: CD3+
    assert set(cells.loc[cells["x_um"] > 120, "CD3_predicted_level"]) == {0}
    # Mirror the staining in the table: 3+ on the right, nothing on the left.
    cells["CD3_predicted_level"] = np.where(cells["x_um"] > 120, 3, 0)
    cells.to_csv(out / "cells.tsv.gz", sep="\t", index=False)
    assert main(images_args(root, settings, out)) == 0
    right = read_rgb(out / "virtual_CD3.tif")
    half = 240  # px: 120 um at 0.5 um/px
    before = [dab_hscore(left[:, :half]), dab_hscore(left[:, half:])]
    after = [dab_hscore(right[:, :half]), dab_hscore(right[:, half:])]
    # Before: CD3 1+ on the left, counterstain only on the right (the pink background's
    # faint DAB read-out); after: the reverse, at 3+.
    assert before[0].pct_positive > before[1].pct_positive + 20
    assert after[0].pct_positive == pytest.approx(before[1].pct_positive, abs=1)
    assert after[1].pct_3 > 10 and before[0].pct_3 == 0
    assert after[1].hscore > before[0].hscore + 50  # 3+ draws darker than 1+


def test_stain_settings_steer_grid_unit_and_default_panel(small_sample, tmp_path):
    root = small_sample
    cutoffs = calibrate(root, tmp_path)
    # The panel path from the settings when --panel is absent.
    settings = write_settings(tmp_path / "settings.yaml", panel=str(root / "panel.yaml"),
                              images=["CD3"], grid_um=120, min_region_cells=1)
    out = tmp_path / "s"
    args = ["stain", "--prediction", str(root / "predict.h5ad"), "--store",
            str(root / "store.h5"), "--cutoffs", str(cutoffs), "--settings", str(settings),
            "--out-dir", str(out)]
    assert main(args) == 0
    h = pd.read_csv(out / "hscores.tsv", sep="\t")
    assert set(h["marker"]) == {"Ki67", "CD3"}  # the test panel's markers, not the default's
    assert set(h["region"]) == {"slide", "r1c1", "r1c2", "r2c1", "r2c2"}  # 240 um / 120 um
    assert set(h["sample"]) == {"predict"}  # no --sample: the prediction's stem

    # stain.unit_um wins over the QC table's 10 um: bigger blobs, more DAB-positive pixels.
    def images(settings: Path) -> list[str]:  # no --panel: the settings' panel
        return ["stain-images", "--cells", str(out / "cells.tsv.gz"), "--hscores",
                str(out / "hscores.tsv"), "--store", str(root / "store.h5"), "--table",
                str(root / "qc.h5ad"), "--settings", str(settings), "--out-dir", str(out),
                "--no-progress"]

    assert main(images(settings)) == 0
    cell_sized = dab_hscore(read_rgb(out / "virtual_CD3.tif")).pct_positive
    wide = write_settings(tmp_path / "wide.yaml", panel=str(root / "panel.yaml"),
                          images=["CD3"], unit_um=16.0)
    assert main(images(wide)) == 0
    assert dab_hscore(read_rgb(out / "virtual_CD3.tif")).pct_positive > cell_sized + 10


@pytest.mark.parametrize("stain, problem", [
    ({"grid_um": 0}, "stain.grid_um"),
    ({"min_region_cells": 0}, "stain.min_region_cells"),
    ({"imgaes": ["Ki67"]}, "stain.imgaes"),
    ({"images": "Ki67"}, "stain.images"),
])
def test_bad_stain_settings_stop_the_cli_naming_the_key(small_sample, tmp_path, capsys, stain,
                                                        problem):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"stain": stain}))
    out = tmp_path / "s"
    assert main(stain_args(small_sample, tmp_path / "cutoffs.tsv", settings, out)) == 2
    assert problem in capsys.readouterr().err and not out.exists()


def test_thumbnail_titles_give_the_all_cells_readout():
    """With a QC table, hscores.tsv also holds predicted rows over the measured cells only;
    the thumbnails' titles give the slide's readout over all cells."""
    import pandas as pd

    from pastflow.stain.images import slide_readout

    rows = [("Ki67", "slide", "predicted", "all", 120.0),
            ("Ki67", "slide", "predicted", "measured", 80.0),
            ("Ki67", "slide", "measured", "measured", 90.0),
            ("Ki67", "r1c1", "predicted", "all", 10.0)]
    table = pd.DataFrame(rows, columns=["marker", "region", "source", "cells", "hscore"])
    assert slide_readout(table) == {"Ki67": 120.0}


def test_a_tissue_microarray_is_scored_per_core(small_sample, tmp_path):
    """With a core map, each core is a region (its own H-score) and a cell outside every
    core is in none; the thumbnails then draw no grid."""
    root = small_sample
    cutoffs = calibrate(root, tmp_path)
    cores = tmp_path / "cores.tsv"
    # Two discs of radius 90 px on the 480 px slide: A1 over the CD3-high left half.
    cores.write_text("core\tpatient\tx_px\ty_px\tradius_px\n"
                     "A1\tTMA-A1\t120\t120\t90\nA2\tTMA-A2\t360\t360\t90\n")
    settings = write_settings(tmp_path / "settings.yaml", images=["Ki67"], min_region_cells=5)
    out = tmp_path / "tma"
    assert main(stain_args(root, cutoffs, settings, out, "--cores", str(cores))) == 0
    cells = pd.read_csv(out / "cells.tsv.gz", sep="\t", keep_default_na=False)
    xs = np.arange(20.0, 480, 40.0)
    xy = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    in_a1 = np.hypot(xy[:, 0] - 120, xy[:, 1] - 120) <= 90
    in_a2 = np.hypot(xy[:, 0] - 360, xy[:, 1] - 360) <= 90
    assert (cells["region"] == "A1").sum() == in_a1.sum() > 0
    assert (cells["region"] == "A2").sum() == in_a2.sum() > 0
    assert (cells["region"] == "").sum() == len(xy) - in_a1.sum() - in_a2.sum()
    h = pd.read_csv(out / "hscores.tsv", sep="\t")
    every = h[(h["cells"] == "all") & (h["marker"] == "CD3")].set_index("region")
    assert set(every.index) == {"slide", "A1", "A2"}
    assert every.loc["A1", "hscore"] > every.loc["A2", "hscore"]  # left half is CD3-high
    assert set(h.loc[h["region"] != "slide", "level"]) == {"core"}
    assert set(h.loc[h["region"] == "slide", "level"]) == {"slide"}
    pairs = pair_hscores(read_hscores([out / "hscores.tsv"]))
    assert sorted(pairs["level"].unique()) == ["core", "slide"]
    assert main(images_args(root, settings, out, "--cores", str(cores))) == 0
    assert (out / "thumbnails.jpg").is_file()
