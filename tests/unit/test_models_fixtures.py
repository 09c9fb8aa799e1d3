"""A tiny synthetic cohort for the pastflow.models tests, built through the real stages.

Each sample is a TIFF slide written with tifffile (0.5 um/px) with cells drawn as discs on a
jittered grid, a patch store built by :func:`pastflow.patches.store.build_patch_store`, and a
QC table made by :func:`pastflow.qc.filter.run_qc` from Poisson counts. Two cell types
differ in both modalities, so that a model can learn something: type 0 is a purple disc and
expresses the proliferation genes, type 1 a red disc expressing the T-cell genes.

Other test modules import :func:`make_sample` / :func:`make_cohort` from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile

MPP = 0.5
PATCH_PX = 16
SPACING = 14.0  # px between cell centres
PINK, COLOURS = np.array([236, 168, 200]), np.array([[70, 35, 120], [200, 50, 70]])
TYPE0_GENES = ["MKI67", "TOP2A", "CDK1", "BUB1", "AURKA", "PLK1"]   # PROLIFERATION_G2M
TYPE1_GENES = ["CD3D", "CD3E", "CD3G", "CD6", "LCK", "ZAP70"]       # T_CELL_RECEPTOR
BACKGROUND_GENES = [f"BG{i:02d}" for i in range(8)]
GENES = TYPE0_GENES + TYPE1_GENES + BACKGROUND_GENES


@dataclass
class Sample:
    name: str
    store: Path
    table: Path
    cell_ids: list[str]
    types: np.ndarray   # int (n,), cell type per cell id
    xy: np.ndarray      # (n, 2) level-0 px


def _render(xy: np.ndarray, types: np.ndarray, size: tuple[int, int], rng) -> np.ndarray:
    height, width = size
    image = np.empty((height, width, 3))
    image[:] = PINK
    rows, cols = np.mgrid[:height, :width]
    for (x, y), t in zip(xy, types):
        cover = np.clip(4.5 - np.hypot(rows - y, cols - x), 0, 1)[..., None]
        image = image * (1 - cover) + COLOURS[t] * cover
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_sample(directory: Path, name: str, n_side: int = 6, seed: int = 0,
                drop_genes: tuple[str, ...] = (), spot_px: int | None = None) -> Sample:
    """One sample of ``n_side**2`` cells; ``drop_genes`` are absent from its table.
    ``spot_px``: a store of spots, cut at that size, instead of cells."""
    from pastflow.patches.store import build_patch_store
    from pastflow.qc.filter import run_qc
    from pastflow.qc.settings import QCSettings

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2)
    xy = 12 + grid * SPACING + rng.uniform(-2, 2, grid.shape)
    types = rng.integers(0, 2, len(xy))
    size = (int(xy[:, 1].max()) + 13, int(xy[:, 0].max()) + 13)
    slide = directory / f"{name}.tif"
    tifffile.imwrite(slide, _render(xy, types, size, rng), photometric="rgb", tile=(32, 32),
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    ids = [f"{name}-c{i}" for i in range(len(xy))]
    store = directory / f"{name}.h5"
    unit = {"unit": "spot", "unit_diameter_um": spot_px * MPP} if spot_px else {}
    build_patch_store(slide, ids, xy, store, target_mpp=MPP, patch_px=spot_px or PATCH_PX,
                      slide_mpp=MPP, progress=False, workers=1, **unit)

    rate = np.full((len(xy), len(GENES)), 2.0)
    rate[:, :6] = np.where(types[:, None] == 0, 12.0, 0.3)
    rate[:, 6:12] = np.where(types[:, None] == 1, 12.0, 0.3)
    counts = rng.poisson(rate).astype(np.float32)
    keep = [g not in drop_genes for g in GENES]
    obs = pd.DataFrame({"cell_id": ids, "sample": name}, index=pd.Index(ids))
    adata = ad.AnnData(sp.csr_matrix(counts[:, keep]), obs=obs,
                       var=pd.DataFrame(index=pd.Index(np.array(GENES)[keep])))
    adata.uns["pastflow"] = {"sample": name}
    qc = run_qc(adata, QCSettings(min_counts=5, min_genes=3, min_cells=1, n_top_genes=16),
                source=name)
    table = directory / f"{name}.h5ad"
    qc.write_h5ad(table)
    return Sample(name, store, table, ids, types, xy)


def make_cohort(directory: Path) -> list[Sample]:
    """Two samples; the second lacks two genes (CD6 and BG07) to exercise the gene mask."""
    return [make_sample(directory / "s1", "s1", seed=1),
            make_sample(directory / "s2", "s2", seed=2, drop_genes=("CD6", "BG07"))]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[Sample]:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


def test_cohort_patches_show_the_cell_types(cohort):
    """The synthetic signal the model tests rely on: type 0 discs are bluer than type 1."""
    from pastflow.patches.reader import PatchStore

    sample = cohort[0]
    store = PatchStore(sample.store)
    patches = store.read(store.index_of(sample.cell_ids)).astype(float)
    centre = patches[:, :, 6:10, 6:10].mean(axis=(2, 3))  # (n, 3) RGB at the cell centre
    blue_minus_red = centre[:, 2] - centre[:, 0]
    assert blue_minus_red[sample.types == 0].min() > 0 > blue_minus_red[sample.types == 1].max()


def test_cohort_tables_follow_the_qc_contract(cohort):
    adata = ad.read_h5ad(cohort[1].table)
    assert "counts" in adata.layers and "highly_variable" in adata.var
    assert "CD6" not in adata.var_names
    assert list(adata.obs["cell_id"]) == cohort[1].cell_ids  # every cell passes QC
    # X is log1p of counts normalised to the fixed QC target (counts per 10,000), on every slide
    assert adata.uns["pastflow"]["qc"]["target_sum"] == 10_000
    assert np.allclose(np.expm1(adata.X.toarray()).sum(1), 10_000, rtol=1e-4)
