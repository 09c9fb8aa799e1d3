"""A simulated tissue microarray (TMA): round cores of many patients on one Xenium slide.

Layout of a TMA sample ``S`` simulated into ``OUT`` (one-patient samples: :mod:`.cohort`)::

    OUT/S/xenium/               one Xenium bundle for all cores, with he.ome.tif and
                                he_imagealignment.csv
    OUT/S/cores.tsv             core, patient, x_px, y_px, radius_px: each core's disc in H&E
                                level-0 pixels of xenium/he.ome.tif
    OUT/S/truth/cells.parquet   as for one patient, plus ``core`` and ``patient`` per cell
    OUT/S/truth/sample.json     as for one patient (``patient`` = the block), plus ``cores``:
                                core, patient, n_cells, composition, patient_parameters
    OUT/S/truth/programs.tsv    true mean expression fractions, one row per (core, cell_type)

Cores are named as on a TMA map: row letter and column number, row-major over
:data:`GRID_COLUMNS` columns ("A1".."A8", "B1", ...). Core ``C`` of block ``B`` is patient
:func:`core_patient` ``(B, C)``, and its composition, expression programmes and hazard are
those :func:`~pastflow.simulate.clinical.patient_parameters` gives that id, as on a
one-patient slide: ``pastflow simulate clinical --patients B-A1 ...`` carries its outcome.
"""

from __future__ import annotations

import json
import logging
import string
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.simulate.biology import (
    CELL_TYPES,
    ExpressionModel,
    ShapeBank,
    build_expression_model,
    build_shape_bank,
)
from pastflow.simulate.clinical import PatientParameters, patient_parameters
from pastflow.simulate.cohort import (LIBRARY_SIZE, ROTATION_DEG, _check_args, patient_truth,
                                      truth_cells, truth_meta)
from pastflow.simulate.genes import gene_panel
from pastflow.simulate.geometry import SlideGeometry
from pastflow.simulate.settings import SimulateSettings
from pastflow.simulate.slide import (GLASS_MARGIN_UM, SimulatedSlide, _seed_sequence, cell_kinds,
                                     cells_table, composition)
from pastflow.simulate.tissue import TissueFields, build_fields, place_cells, side_for_cells

log = logging.getLogger(__name__)

GRID_COLUMNS = 8  # cores per TMA row
CORE_GAP = 0.25  # glass between neighbouring cores, as a fraction of the largest core diameter
DISC_COVER = np.pi / 4  # a disc covers this fraction of its bounding square
KINDS = CELL_TYPES + ("tumour_proliferating",)  # rows of one core's expression profiles
CORES_COLUMNS = ("core", "patient", "x_px", "y_px", "radius_px")


def core_ids(n_cores: int) -> list[str]:
    """TMA map names of ``n_cores`` cores, row-major: ``A1..A8, B1, ...`` (rows after Z: AA, AB, ...)."""
    def row_name(r: int) -> str:
        name = ""
        r += 1
        while r:
            r, rem = divmod(r - 1, 26)
            name = string.ascii_uppercase[rem] + name
        return name

    return [f"{row_name(i // GRID_COLUMNS)}{i % GRID_COLUMNS + 1}" for i in range(n_cores)]


def core_patient(block: str, core: str) -> str:
    """The patient id of ``core`` of TMA ``block`` (the one place core patients are named)."""
    return f"{block}-{core}"


def simulated_core_patients(sheet: pd.DataFrame, settings: SimulateSettings) -> dict[str, list[str]]:
    """Sample -> its cores' patients, for the sheet's samples simulated as TMAs
    (``settings.cores_for(sample) > 0``; the sheet's ``patient`` is the block). Their core
    maps do not exist until simulated, so the names come from :func:`core_patient`.

    Raises:
        InputError: a sheet row with a core map (column ``cores``) that ``simulate.tma_cores``
            gives no cores, or the reverse (the two must agree, or the map is never written
            or never read).
    """
    out = {}
    for sample, block, cores in zip(sheet["sample"], sheet["patient"], sheet["cores"]):
        n_cores = settings.cores_for(sample)
        if bool(cores) != (n_cores > 0):
            raise InputError("config", f"sample {sample!r}: config key 'simulate.tma_cores' "
                                       f"gives it {n_cores} cores but its sheet row "
                                       f"{'has a' if cores else 'has no'} core map (column "
                                       "'cores'); make them agree")
        if n_cores > 0:
            out[sample] = [core_patient(block, core) for core in core_ids(n_cores)]
    return out


@dataclass
class SimulatedTMA:
    """A TMA laid out as one section.

    ``slide``: all cores' cells on one slide (``patient`` None; cells carry ``core`` and
    ``patient`` columns; cell ``kind`` ``k`` of core ``i`` is row ``i * len(KINDS) + k`` of
    ``slide.expression``). ``cores``: one row per core, ``core, patient, x_um, y_um,
    radius_um`` (centre and radius in the tissue frame = Xenium microns).
    """

    block: str
    slide: SimulatedSlide
    cores: pd.DataFrame
    patients: list[PatientParameters]
    models: list[ExpressionModel]  # per core, stacked into slide.expression

    def cores_table(self) -> pd.DataFrame:
        """``cores.tsv``: centre and radius of each core in H&E level-0 pixels."""
        g = self.slide.geometry
        x_px, y_px = g.to_px(self.cores["x_um"].to_numpy(), self.cores["y_um"].to_numpy())
        return pd.DataFrame({"core": self.cores["core"], "patient": self.cores["patient"],
                             "x_px": x_px, "y_px": y_px,
                             "radius_px": self.cores["radius_um"].to_numpy() / g.mpp})

    def programs(self) -> pd.DataFrame:
        """Per-core kinds x genes true mean fractions, index ``(core, cell_type)``."""
        return pd.concat([m.to_frame() for m in self.models], keys=list(self.cores["core"]),
                         names=["core"])


def _disc(fields: TissueFields, radius_um: float) -> TissueFields:
    """``fields`` with the tissue cut to the disc inscribed in its square frame.

    The tissue field becomes the signed distance to the disc edge (microns, > 0 inside), the
    unit :class:`TissueFields` uses, so the rendered core edge is as soft as any tissue edge.
    """
    ny, nx = fields.tissue.shape
    yy, xx = np.mgrid[0:ny, 0:nx] * fields.res_um
    tissue = radius_um - np.hypot(xx - radius_um, yy - radius_um)
    return replace(fields, tissue=tissue.astype(np.float32))


def _lay_out_core(sample: str, core: str, params: PatientParameters, n_cells: int, seed: int,
                  bank: ShapeBank) -> tuple[float, TissueFields, pd.DataFrame]:
    """Diameter (microns), fields and placed cells of one core, in its own square frame."""
    rng = np.random.default_rng(_seed_sequence(seed, sample, core, "layout"))
    diameter = side_for_cells(n_cells, params, DISC_COVER)
    fields = _disc(build_fields(rng, diameter, diameter, params, tissue_cover=1.0), diameter / 2)
    return diameter, fields, place_cells(rng, fields, bank, params, n_cells)


def _paste_fields(width_um: float, height_um: float, pitch_um: float, origins: np.ndarray,
                  radii: np.ndarray, core_fields: list[TissueFields]) -> TissueFields:
    """One field grid for the whole slide: each pitch cell takes its core's fields.

    Core origins sit on grid nodes, so node values are the cores' own where their grids
    share the resolution (no resampling blur); the tissue field is each core's signed disc
    distance, glass elsewhere.
    """
    res = min(f.res_um for f in core_fields)
    ny, nx = int(np.ceil(height_um / res)) + 2, int(np.ceil(width_um / res)) + 2
    yy, xx = np.mgrid[0:ny, 0:nx] * res
    cell = (np.minimum(yy // pitch_um, np.ceil(height_um / pitch_um) - 1) * GRID_COLUMNS
            + np.minimum(xx // pitch_um, GRID_COLUMNS - 1)).astype(np.int64)
    out = {"tissue": np.full((ny, nx), -pitch_um, np.float32),
           "tumour": np.full((ny, nx), -1.0, np.float32), "immune": np.full((ny, nx), -1.0, np.float32),
           "fibre_cos2": np.ones((ny, nx), np.float32), "fibre_sin2": np.zeros((ny, nx), np.float32)}
    for k, (f, (ox, oy), r) in enumerate(zip(core_fields, origins, radii)):
        sel = cell == k
        x, y = xx[sel] - ox, yy[sel] - oy
        out["tissue"][sel] = r - np.hypot(x - r, y - r)
        for name in ("tumour", "immune", "fibre_cos2", "fibre_sin2"):
            out[name][sel] = f.sample(name, x, y)
    return TissueFields(width_um, height_um, res, **out)


def lay_out_tma(sample: str, block: str, n_cores: int, cells_per_core: int, *, seed: int = 0,
                mpp: float = 0.25, n_genes: int = 300, cohort_seed: int = 0) -> SimulatedTMA:
    """Lay out ``n_cores`` cores of ``cells_per_core`` cells on one slide; nothing is written.

    Each core is a disc sized for its cells at its patient's nominal densities
    (:func:`~pastflow.simulate.tissue.side_for_cells`), laid out and filled as a one-patient
    section would be; cores sit on a square grid whose pitch leaves :data:`CORE_GAP` of the
    largest diameter as glass between discs, and the grid is rotated on the H&E like any
    post-Xenium H&E. One nucleus-shape bank and the technical part of the expression model
    (gene baselines, probe loadings) are shared by the slide; patient programmes are per core.
    """
    ids = core_ids(n_cores)
    patients = [patient_parameters(core_patient(block, c), cohort_seed) for c in ids]
    bank = build_shape_bank(np.random.default_rng(_seed_sequence(seed, sample, "shapes")))
    laid = [_lay_out_core(sample, c, p, cells_per_core, seed, bank) for c, p in zip(ids, patients)]
    diameters = np.array([d for d, _, _ in laid])
    res = min(f.res_um for _, f, _ in laid)  # all 4 um unless a core spans over ~4.8 mm
    pitch = float(np.ceil((1 + CORE_GAP) * diameters.max() / res) * res)
    n_rows = -(-n_cores // GRID_COLUMNS)
    width, height = min(n_cores, GRID_COLUMNS) * pitch, n_rows * pitch
    slot = np.column_stack([np.arange(n_cores) % GRID_COLUMNS, np.arange(n_cores) // GRID_COLUMNS])
    # Core frames start on field-grid nodes, centred in their slot to within half a node.
    origins = slot * pitch + np.round((pitch - diameters) / 2 / res)[:, None] * res
    radii = diameters / 2
    fields = _paste_fields(width, height, pitch, origins, radii, [f for _, f, _ in laid])
    geometry = SlideGeometry.around(width, height, mpp, ROTATION_DEG["xenium"], GLASS_MARGIN_UM)

    frames = []
    for i, (core, p, (_, _, placed)) in enumerate(zip(ids, patients, laid)):
        frames.append(placed.assign(x_um=placed["x_um"] + origins[i, 0], y_um=placed["y_um"] + origins[i, 1],
                                    kind=cell_kinds(placed) + i * len(KINDS), core=core, patient=p.patient))
    placed = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(_seed_sequence(seed, sample, "cell ids"))
    cells = cells_table(placed, geometry, rng, placed["kind"].to_numpy(),
                        core=placed["core"].to_numpy(), patient=placed["patient"].to_numpy())
    # The same stream for every core: shared gene baselines and loadings (one panel, one
    # run); the patient's ER / HER2 / IFN programmes make the cores differ.
    genes = gene_panel(n_genes)
    models = [build_expression_model(genes, p, np.random.default_rng(_seed_sequence(seed, sample, "expression")))
              for p in patients]
    expression = ExpressionModel(genes, KINDS * n_cores, np.concatenate([m.profiles for m in models]))
    slide = SimulatedSlide(sample, None, seed, width, height, fields, bank, geometry, cells, expression)
    cores = pd.DataFrame({"core": ids, "patient": [p.patient for p in patients],
                          "x_um": origins[:, 0] + radii, "y_um": origins[:, 1] + radii,
                          "radius_um": radii})
    log.info("laid out TMA %s (block %s): %d cores, %d cells on %.0f x %.0f um, slide %d x %d px",
             sample, block, n_cores, len(cells), width, height, geometry.width_px, geometry.height_px)
    return SimulatedTMA(block, slide, cores, patients, models)


def _write_truth(truth_dir: Path, tma: SimulatedTMA, sheet: dict[str, str], n_genes: int,
                 cohort_seed: int) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    c = tma.slide.cells
    truth_cells(tma.slide, {"core": c["core"].astype(str), "patient": c["patient"].astype(str)}).to_parquet(
        truth_dir / "cells.parquet", index=False)
    tma.programs().to_csv(truth_dir / "programs.tsv", sep="\t", float_format="%.6g")
    meta = truth_meta(tma.slide, tma.block, "xenium", sheet, n_genes, cohort_seed)
    meta["cores"] = [{"core": core, "patient": p.patient, "n_cells": int((c["core"] == core).sum()),
                      "composition": composition(c.loc[c["core"] == core, "cell_type"]),
                      "patient_parameters": patient_truth(p)}
                     for core, p in zip(tma.cores["core"], tma.patients)]
    (truth_dir / "sample.json").write_text(json.dumps(meta, indent=2))


def simulate_tma(out_dir: str | Path, sample: str, block: str, n_cores: int, cells_per_core: int,
                 seed: int = 0, *, settings: SimulateSettings = SimulateSettings(),
                 progress: bool = True) -> Path:
    """Simulate TMA ``block`` (``n_cores`` cores of ``cells_per_core`` cells) as one Xenium
    sample into ``out_dir/sample`` (layout in the module docstring), atomically.

    ``seed`` and the sample name seed the layout; ``settings.cohort_seed`` and each core's
    patient id seed that core's biology. Returns ``out_dir/sample``.
    """
    from pastflow.simulate.xenium import write_xenium

    out_dir = Path(out_dir)
    _check_args(out_dir, sample, block, "xenium", cells_per_core, settings.mpp, settings.n_genes)
    if n_cores < 1:
        raise InputError(out_dir, f"a TMA needs at least one core, got {n_cores}")
    start = time.perf_counter()
    tma = lay_out_tma(sample, block, n_cores, cells_per_core, seed=seed, mpp=settings.mpp,
                      n_genes=settings.n_genes, cohort_seed=settings.cohort_seed)
    final = out_dir / sample
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        counts = tma.slide.counts(LIBRARY_SIZE["xenium"], settings.dispersion)
        sheet, _ = write_xenium(tmp / "xenium", tma.slide, counts, progress)
        tma.cores_table().to_csv(tmp / "cores.tsv", sep="\t", index=False, float_format="%.4f")
        _write_truth(tmp / "truth", tma, sheet, settings.n_genes, settings.cohort_seed)
    log.info("simulated TMA %s (%d cores, %d cells) in %.1f s -> %s", sample, n_cores,
             len(tma.slide.cells), time.perf_counter() - start, final)
    return final
