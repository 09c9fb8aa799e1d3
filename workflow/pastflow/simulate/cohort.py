"""Entry points: one sample in its vendor format with ground truth, and the benchmark slide.

Layout of a sample ``S`` simulated into ``OUT``::

    OUT/S/xenium/                 Xenium bundle, with he.ome.tif and he_imagealignment.csv
    OUT/S/outs/ + OUT/S/he.tif    Visium or Visium HD (Space Ranger outs/) and the H&E
    OUT/S/he.tif                  H&E-only
    OUT/S/truth/cells.parquet     cell_id, cell_type, domain, proliferating, x_px, y_px (H&E
                                  level-0 pixels), x_um, y_um (tissue-frame microns = Xenium
                                  microns = Visium HD bin-grid microns), + spot / bin_008um
    OUT/S/truth/bins_002um.parquet  Visium HD: the cell whose body holds each 2 um bin
    OUT/S/truth/sample.json       sample, patient, technology, mpp, n_cells, composition, ...
    OUT/S/truth/programs.tsv      kind x gene true mean expression fractions
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path, atomic_outputs
from pastflow.errors import InputError
from pastflow.simulate.clinical import PatientParameters
from pastflow.simulate.genes import REQUIRED_MARKERS
from pastflow.simulate.slide import SimulatedSlide, simulate_slide
from pastflow.simulate.tiff import write_pyramid
from pastflow.simulate.settings import SimulateSettings
from pastflow.technologies import SIMULATED as SIMULATED_TECHNOLOGIES

log = logging.getLogger(__name__)

# Mean transcripts per cell (panel genes) by technology.
LIBRARY_SIZE = {"xenium": 200.0, "visium": 300.0, "visium_hd": 300.0}
# Tissue rotation on the H&E (degrees), by technology: post-Xenium H&E is re-imaged on another
# scanner, Visium images come from the capture slide itself.
ROTATION_DEG = {"xenium": 4.0, "visium": 1.5, "visium_hd": 1.0, "he_only": 0.0}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_args(out_dir: Path, sample: str, patient: str, technology: str, n_cells: int,
                mpp: float, n_genes: int) -> None:
    if technology not in SIMULATED_TECHNOLOGIES:
        raise InputError(out_dir, f"cannot simulate technology {technology!r}; "
                                  f"choose one of {', '.join(SIMULATED_TECHNOLOGIES)}")
    for what, name in (("sample", sample), ("patient", patient)):
        if not _SAFE_NAME.match(name):
            raise InputError(out_dir, f"{what} id {name!r} must be letters, digits, '.', '_' or '-'")
    if n_cells < 1:
        raise InputError(out_dir, f"n_cells must be >= 1, got {n_cells}")
    if not 0.05 <= mpp <= 2.0:
        raise InputError(out_dir, f"mpp must be between 0.05 and 2 um/px, got {mpp}")
    if n_genes < len(REQUIRED_MARKERS):
        raise InputError(out_dir, f"n_genes must be >= {len(REQUIRED_MARKERS)} (the required markers), got {n_genes}")


def truth_cells(slide: SimulatedSlide, extra_columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The ``truth/cells.parquet`` table: the slide's cells plus ``extra_columns``."""
    c = slide.cells
    return pd.DataFrame({
        "cell_id": c["cell_id"].astype(str),
        "cell_type": c["cell_type"].astype(str),
        "domain": c["domain"].astype(str),
        "proliferating": c["proliferating"],
        "x_px": c["x_px"],
        "y_px": c["y_px"],
        "x_um": c["x_um"],
        "y_um": c["y_um"],
        **extra_columns,
    })


def patient_truth(p: PatientParameters) -> dict:
    """A patient's latent parameters as ``truth/sample.json`` records them."""
    return {
        "immune_infiltration": p.immune_infiltration,
        "proliferation_fraction": p.proliferation_fraction,
        "tumour_fraction": p.tumour_fraction,
        "er_positive": p.er_positive,
        "her2_positive": p.her2_positive,
        "age": p.age,
        "stage": p.stage,
        "log_hazard": p.log_hazard,
    }


def truth_meta(slide: SimulatedSlide, patient: str, technology: str, sheet: dict[str, str],
               n_genes: int, cohort_seed: int) -> dict:
    """``truth/sample.json`` of a slide, the patient's parameters included when it has one."""
    c = slide.cells
    meta = {
        "sample": slide.sample,
        "patient": patient,
        "technology": technology,
        "mpp": slide.geometry.mpp,
        "n_cells": int(len(c)),
        "n_genes": n_genes,
        "composition": slide.composition(),
        "domain_composition": {d: round(float(v), 4) for d, v in
                               c["domain"].value_counts(normalize=True).sort_index().items()},
        "proliferating_fraction_of_tumour": round(float(c.loc[c["cell_type"] == "tumour", "proliferating"].mean()), 4)
        if (c["cell_type"] == "tumour").any() else 0.0,
        "slide_px": [slide.geometry.width_px, slide.geometry.height_px],
        "tissue_um": [slide.width_um, slide.height_um],
        "um_to_px": slide.geometry.um_to_px.tolist(),
        "rotation_deg": slide.geometry.rotation_deg,
        "seed": slide.seed,
        "cohort_seed": cohort_seed,
    }
    if slide.patient is not None:
        meta["patient_parameters"] = patient_truth(slide.patient)
    # Sample-sheet entries (contracts.SHEET_COLUMNS), relative to the sample folder.
    meta["sheet"] = sheet
    return meta


def write_truth(truth_dir: Path, slide: SimulatedSlide, technology: str, sheet: dict[str, str],
                extra_columns: dict[str, np.ndarray], n_genes: int, cohort_seed: int) -> None:
    """``cells.parquet``, ``sample.json`` and ``programs.tsv`` into ``truth_dir``."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth_cells(slide, extra_columns).to_parquet(truth_dir / "cells.parquet", index=False)
    slide.expression.to_frame().to_csv(truth_dir / "programs.tsv", sep="\t", float_format="%.6g")
    meta = truth_meta(slide, slide.patient.patient, technology, sheet, n_genes, cohort_seed)
    (truth_dir / "sample.json").write_text(json.dumps(meta, indent=2))


def simulate_sample(out_dir: str | Path, sample: str, patient: str, technology: str,
                    n_cells: int | None = None, seed: int = 0, *,
                    settings: SimulateSettings = SimulateSettings(),
                    progress: bool = True) -> Path:
    """Simulate one sample of ``patient`` in ``technology``'s vendor format into ``out_dir/sample``.

    The folder is built under a temporary name and renamed when complete. ``seed`` and the
    sample name seed the section; ``settings.cohort_seed`` and the patient id seed the
    patient's biology (shared by all the patient's samples). ``n_cells`` None: the count
    ``settings.n_cells`` gives this sample. Returns ``out_dir/sample``.
    """
    from pastflow.simulate.visium import write_visium
    from pastflow.simulate.visium_hd import write_visium_hd
    from pastflow.simulate.xenium import write_xenium

    out_dir = Path(out_dir)
    n_cells = settings.cells_for(sample) if n_cells is None else n_cells
    mpp, n_genes, cohort_seed = settings.mpp, settings.n_genes, settings.cohort_seed
    dispersion = settings.dispersion
    _check_args(out_dir, sample, patient, technology, n_cells, mpp, n_genes)
    start = time.perf_counter()
    slide = simulate_slide(sample, patient, n_cells, seed=seed, mpp=mpp, n_genes=n_genes,
                           cohort_seed=cohort_seed, rotation_deg=ROTATION_DEG[technology])
    final = out_dir / sample
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        if technology == "he_only":
            write_pyramid(tmp / "he.tif", slide.renderer(), mpp, layout="generic",
                          description=f"pastflow simulated H&E {sample}", progress=progress)
            sheet, extra = {"data": "", "image": "he.tif", "alignment": ""}, {}
        else:
            counts = slide.counts(LIBRARY_SIZE[technology], dispersion)
            writer = {"xenium": lambda: write_xenium(tmp / "xenium", slide, counts, progress),
                      "visium": lambda: write_visium(tmp, slide, counts, progress),
                      "visium_hd": lambda: write_visium_hd(tmp, slide, counts, progress)}[technology]
            sheet, extra = writer()
        write_truth(tmp / "truth", slide, technology, sheet, extra, n_genes, cohort_seed)
    log.info("simulated %s (%s, %d cells) in %.1f s -> %s", sample, technology, len(slide.cells),
             time.perf_counter() - start, final)
    return final


def write_benchmark_slide(path_tif: str | Path, path_cells_parquet: str | Path, n_cells: int = 500_000,
                          size_px: int = 40_000, mpp: float = 0.25, seed: int = 0,
                          progress: bool = True) -> tuple[Path, Path]:
    """A large H&E-only slide for benchmarks: generic pyramidal JPEG TIFF + cell table.

    ``size_px`` x ``size_px`` level-0 pixels, tissue filling the frame (no glass margin, no
    rotation). The parquet has ``cell_id, x_px, y_px, cell_type``. Rendered tile by tile:
    peak memory stays well under 2 GB for 500,000 cells on 40,000 x 40,000 px.
    """
    path_tif, path_cells = Path(path_tif), Path(path_cells_parquet)
    if n_cells < 1 or size_px < 256:
        raise InputError(path_tif, f"need n_cells >= 1 and size_px >= 256, got {n_cells}, {size_px}")
    start = time.perf_counter()
    side_um = size_px * mpp
    slide = simulate_slide("benchmark", "benchmark", n_cells, seed=seed, mpp=mpp, n_genes=len(REQUIRED_MARKERS),
                           size_um=side_um, margin_um=0.0, tissue_cover=0.95)
    log.info("benchmark layout: %d cells in %.1f s", len(slide.cells), time.perf_counter() - start)
    with atomic_outputs(path_tif, path_cells) as (tmp_tif, tmp_cells):
        write_pyramid(tmp_tif, slide.renderer(), mpp, layout="generic",
                      description=f"pastflow benchmark slide, {len(slide.cells)} cells", progress=progress)
        pd.DataFrame({
            "cell_id": slide.cells["cell_id"].astype(str),
            "x_px": slide.cells["x_px"],
            "y_px": slide.cells["y_px"],
            "cell_type": slide.cells["cell_type"].astype(str),
        }).to_parquet(tmp_cells, index=False)
    log.info("benchmark slide %s written in %.1f s", path_tif, time.perf_counter() - start)
    return path_tif, path_cells
