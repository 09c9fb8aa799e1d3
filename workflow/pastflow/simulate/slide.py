"""One simulated tissue section: patient, layout, cells, expression model and slide geometry.

Every technology writer takes a :class:`SimulatedSlide`; nothing here writes files.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pastflow.simulate.biology import (
    CELL_TYPES,
    DOMAINS,
    ExpressionModel,
    ShapeBank,
    build_expression_model,
    build_shape_bank,
    sample_counts,
)
from pastflow.simulate.clinical import PatientParameters, patient_parameters
from pastflow.simulate.genes import gene_panel
from pastflow.simulate.geometry import SlideGeometry
from pastflow.simulate.render import HERenderer
from pastflow.simulate.tenx import xenium_cell_ids
from pastflow.simulate.tissue import TissueFields, build_fields, place_cells, side_for_cells

log = logging.getLogger(__name__)

GLASS_MARGIN_UM = 40.0  # glass around the tissue frame on vendor slides


@dataclass
class SimulatedSlide:
    """A section and its cells.

    ``cells`` columns: ``cell_id`` (Xenium-style string), ``cell_type``, ``domain`` (names),
    ``proliferating`` (bool), ``x_um, y_um`` (tissue frame), ``x_px, y_px`` (H&E level 0,
    float; the nucleus is drawn centred on the nearest pixel), ``shape`` (bank index),
    ``kind`` (row of ``expression.profiles``).
    """

    sample: str
    patient: PatientParameters | None  # None on a TMA: each core has its own (simulate.tma)
    seed: int
    width_um: float
    height_um: float
    fields: TissueFields
    bank: ShapeBank
    geometry: SlideGeometry
    cells: pd.DataFrame
    expression: ExpressionModel

    def renderer(self, tile: int = 512) -> HERenderer:
        return HERenderer(self.geometry, self.fields, self.bank, self.cells["x_px"].to_numpy(),
                          self.cells["y_px"].to_numpy(), self.cells["shape"].to_numpy(),
                          seed=self.seed, tile=tile)

    def rng(self, purpose: str) -> np.random.Generator:
        """An independent random stream for one purpose (counts, transcripts, ...)."""
        return np.random.default_rng(_seed_sequence(self.seed, self.sample, purpose))

    def counts(self, mean_library: float, dispersion: float = 0.1):
        """``(n_cells, n_genes)`` CSR counts with library sizes ~ lognormal around ``mean_library``,
        scaled by nucleus size (bigger cells hold more RNA)."""
        rng = self.rng("counts")
        area = np.pi * np.prod(self.bank.semi_axes[self.cells["shape"].to_numpy()], axis=1)
        size = np.sqrt(area / np.median(area))
        library = mean_library * size * rng.lognormal(-0.045, 0.3, len(self.cells))
        return sample_counts(self.expression, self.cells["kind"].to_numpy(), library, rng, dispersion)

    def composition(self) -> dict[str, float]:
        """Realised fraction of each cell type."""
        return composition(self.cells["cell_type"])


def composition(cell_type: pd.Series) -> dict[str, float]:
    """Fraction of each of :data:`CELL_TYPES` among ``cell_type`` (names), rounded to 4 places."""
    frac = cell_type.value_counts(normalize=True)
    return {t: round(float(frac.get(t, 0.0)), 4) for t in CELL_TYPES}


def cell_kinds(placed: pd.DataFrame) -> np.ndarray:
    """Each placed cell's row of the expression profiles: its type, cycling tumour cells
    ``tumour_proliferating`` (the row after the types)."""
    kind = placed["cell_type"].to_numpy().copy()
    kind[placed["proliferating"].to_numpy()] = len(CELL_TYPES)
    return kind


def _seed_sequence(seed: int, *keys: str) -> np.random.SeedSequence:
    digest = hashlib.sha256("\x1f".join(keys).encode()).digest()
    return np.random.SeedSequence([int(seed), int.from_bytes(digest[:8], "little")])


def cells_table(placed: pd.DataFrame, geometry: SlideGeometry, rng: np.random.Generator,
                kind: np.ndarray, **extra: np.ndarray) -> pd.DataFrame:
    """:attr:`SimulatedSlide.cells` of cells placed in the tissue frame (``place_cells``):
    Xenium-style ids, type and domain names, H&E pixels, ``kind``, and any ``extra`` columns."""
    x_px, y_px = geometry.to_px(placed["x_um"].to_numpy(), placed["y_um"].to_numpy())
    # Unique random uint32 prefixes, sorted like Xenium's (ids increase along the table).
    prefixes = np.sort(rng.choice(2**31, size=len(placed), replace=False).astype(np.uint32) + (1 << 20))
    return pd.DataFrame({
        "cell_id": xenium_cell_ids(prefixes),
        "cell_type": pd.Categorical.from_codes(placed["cell_type"], CELL_TYPES),
        "domain": pd.Categorical.from_codes(placed["domain"], DOMAINS),
        "proliferating": placed["proliferating"].to_numpy(),
        "x_um": placed["x_um"].to_numpy(),
        "y_um": placed["y_um"].to_numpy(),
        "x_px": x_px,
        "y_px": y_px,
        "shape": placed["shape"].to_numpy(),
        "kind": kind,
        **extra,
    })


def simulate_slide(sample: str, patient: str, n_cells: int, *, seed: int = 0, mpp: float = 0.25,
                   n_genes: int = 300, cohort_seed: int = 0, rotation_deg: float = 0.0,
                   margin_um: float = GLASS_MARGIN_UM, size_um: float | None = None,
                   tissue_cover: float = 0.85) -> SimulatedSlide:
    """Lay out one section of ``patient``: fields, ``n_cells`` placed cells, expression model.

    ``size_um``: side of the square tissue frame (default: sized for ``n_cells`` at nominal
    densities). ``rotation_deg``: rotation of the tissue frame on the H&E.
    """
    params = patient_parameters(patient, cohort_seed)
    rng = np.random.default_rng(_seed_sequence(seed, sample, "layout"))
    side = size_um if size_um is not None else side_for_cells(n_cells, params, tissue_cover)
    bank = build_shape_bank(rng)
    fields = build_fields(rng, side, side, params, tissue_cover=tissue_cover)
    placed = place_cells(rng, fields, bank, params, n_cells)
    geometry = SlideGeometry.around(side, side, mpp, rotation_deg, margin_um)
    cells = cells_table(placed, geometry, rng, cell_kinds(placed))
    expression = build_expression_model(gene_panel(n_genes), params, rng)
    log.info("laid out %s (patient %s): %d cells on %.0f x %.0f um, slide %d x %d px",
             sample, patient, len(cells), side, side, geometry.width_px, geometry.height_px)
    return SimulatedSlide(sample, params, seed, side, side, fields, bank, geometry, cells, expression)
