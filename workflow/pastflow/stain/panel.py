"""The virtual IHC marker panel: marker -> genes, stain compartment and optional cut-offs.

A panel is a YAML file (config ``stain.panel``; the shipped default, ``resources/ihc_panel.yaml``,
is named in :class:`~pastflow.stain.settings.StainSettings`)::

    markers:
      Ki67: {genes: [MKI67], compartment: nuclear}
      CD3: {genes: [CD3D, CD3E, CD3G], compartment: membrane, cutoffs: [0.8, 1.7, 2.0]}
      PD-L1: {genes: [CD274], compartment: membrane, optional: true}
      CD68: {genes: [CD68], compartment: cytoplasmic, calibration: within_slide}

A marker's per-cell *score* is the mean log1p-normalised expression of its genes found in a
table (:func:`marker_scores`); ``cutoffs`` (score units) bin it into 0 / 1+ / 2+ / 3+.
Every gene of a marker must be measured by the cohort (checked at start-up,
:mod:`pastflow.preflight`): a misspelt symbol would draw a blank stain that reads as a true
negative. ``optional: true`` lets the data lack the marker's genes (it is then not scored).
Without ``cutoffs``, ``calibration`` says where they are fitted (:mod:`pastflow.stain.
calibrate`): ``training`` (default: on the training slides, measured and predicted scores each
on their own) or ``within_slide`` (on each slide's own scores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pastflow.errors import InputError

log = logging.getLogger(__name__)

COMPARTMENTS = ("nuclear", "membrane", "cytoplasmic")
CALIBRATIONS = ("training", "within_slide")


@dataclass(frozen=True)
class Marker:
    """One IHC marker: its genes (HGNC symbols), compartment, fixed cut-offs (or None) and
    whether the data may lack its genes (``optional``), and where cut-offs are otherwise
    fitted (``calibration``, one of :data:`CALIBRATIONS`)."""

    name: str
    genes: tuple[str, ...]
    compartment: str = "nuclear"
    cutoffs: tuple[float, float, float] | None = None
    optional: bool = False
    calibration: str = "training"


def read_panel(path: str | Path) -> list[Marker]:
    """Parse and check a panel YAML; InputError naming the file and the bad entry."""
    from pastflow.settings import read_yaml

    path = Path(path)
    doc = read_yaml(path, "marker panel")
    if not isinstance(doc, dict) or not isinstance(doc.get("markers"), dict) or not doc["markers"]:
        raise InputError(path, "expected a mapping 'markers:' of marker name -> {genes: [...]}")
    panel = []
    for name, entry in doc["markers"].items():
        where = f"marker {name!r}"
        if not isinstance(entry, dict):
            raise InputError(path, f"{where}: expected a mapping with 'genes'")
        unknown = set(entry) - {"genes", "compartment", "cutoffs", "optional", "calibration"}
        if unknown:
            raise InputError(path, f"{where}: unknown keys {sorted(unknown)}")
        genes = entry.get("genes")
        if (not isinstance(genes, list) or not genes
                or not all(isinstance(g, str) and g for g in genes)):
            raise InputError(path, f"{where}: 'genes' must be a non-empty list of gene symbols")
        compartment = entry.get("compartment", "nuclear")
        if compartment not in COMPARTMENTS:
            raise InputError(path, f"{where}: compartment {compartment!r} is not one of "
                                   f"{', '.join(COMPARTMENTS)}")
        cutoffs = entry.get("cutoffs")
        if cutoffs is not None:
            try:
                cutoffs = tuple(float(c) for c in cutoffs)
            except (TypeError, ValueError):
                raise InputError(path, f"{where}: 'cutoffs' must be three numbers") from None
            if len(cutoffs) != 3 or not cutoffs[0] < cutoffs[1] < cutoffs[2]:
                raise InputError(path, f"{where}: 'cutoffs' must be three increasing numbers, "
                                       f"got {list(cutoffs)}")
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise InputError(path, f"{where}: 'optional' must be true or false, got {optional!r}")
        calibration = entry.get("calibration", "training")
        if calibration not in CALIBRATIONS:
            raise InputError(path, f"{where}: calibration {calibration!r} is not one of "
                                   f"{', '.join(CALIBRATIONS)}")
        if cutoffs is not None and "calibration" in entry:
            raise InputError(path, f"{where}: give 'cutoffs' or 'calibration', not both "
                                   "(fixed cut-offs are not fitted)")
        panel.append(Marker(str(name), tuple(genes), compartment, cutoffs, optional,
                            calibration))
    return panel


def marker_scores(X, var_names: Sequence[str], panel: Sequence[Marker],
                  source: str = "table") -> pd.DataFrame:
    """Per-cell marker scores: mean over each marker's genes of ``X`` (log1p-normalised).

    ``X``: ``(n_cells, n_genes)`` dense or sparse; returns ``float32 (n_cells, n_markers)``
    with one column per marker that has at least one gene in ``var_names``. Missing genes are
    logged; a marker with none of its genes is skipped with a warning (``source`` names the
    table in the message).
    """
    index = {g: i for i, g in enumerate(map(str, var_names))}
    columns = {}
    for marker in panel:
        found = [index[g] for g in marker.genes if g in index]
        missing = [g for g in marker.genes if g not in index]
        if not found:
            log.warning("%s: marker %s skipped: none of its genes (%s) in the table", source,
                        marker.name, ", ".join(marker.genes))
            continue
        if missing:
            log.info("%s: marker %s scored without %s", source, marker.name, ", ".join(missing))
        block = X[:, found]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        columns[marker.name] = block.mean(axis=1).astype(np.float32)
    return pd.DataFrame(columns)
