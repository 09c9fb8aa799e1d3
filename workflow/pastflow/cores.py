"""Tissue-microarray (TMA) slides: the cores of one slide and the patient of each core.

A TMA slide carries many patients' tissue cores on one glass slide, the layout survival
cohorts often use. The sample sheet's optional ``cores`` column names the slide's *core map*,
a TSV with a header and one row per core::

    core  patient  x_px  y_px  radius_px

(centre and radius in the H&E's level-0 pixels, as a TMA de-arraying tool or a pathologist's
annotation gives them). The whole slide stays one sample (one job per stage); the core map
only says whose tissue each cell is: a cell belongs to the core whose disc holds its centre,
and a cell outside every core (debris, a fold) belongs to none and is left out of the
per-patient readouts. The sheet's ``patient`` of a TMA row names the block; survival and the
per-core H-scores use the cores' patients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from pastflow.errors import InputError

CORE_MAP_COLUMNS = ("core", "patient", "x_px", "y_px", "radius_px")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # as the sheet's sample and patient ids


@dataclass(frozen=True)
class CoreMap:
    """A validated core map: ``table`` indexed by core, columns of :data:`CORE_MAP_COLUMNS`."""

    path: Path
    table: pd.DataFrame

    @property
    def patients(self) -> list[str]:
        """The cores' patients, each once, in the map's order (a patient may have two cores)."""
        return list(dict.fromkeys(self.table["patient"]))

    def assign(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """The core of each point (H&E level-0 pixels): an object array of core ids, '' for a
        point outside every core."""
        from scipy.spatial import cKDTree

        points = np.column_stack([np.asarray(x_px, np.float64), np.asarray(y_px, np.float64)])
        out = np.full(len(points), "", dtype=object)
        if not len(points):
            return out
        centres = self.table[["x_px", "y_px"]].to_numpy(np.float64)
        # Discs do not overlap (checked on reading), so the nearest centre is the only candidate.
        distance, nearest = cKDTree(centres).query(points)
        inside = distance <= self.table["radius_px"].to_numpy(np.float64)[nearest]
        out[inside] = self.table.index.to_numpy()[nearest[inside]]
        return out

    def patients_of(self, cores: np.ndarray) -> np.ndarray:
        """The patient of each core id of ``cores`` ('' stays '')."""
        lookup = dict(zip(self.table.index, self.table["patient"]))
        return np.array([lookup.get(c, "") for c in cores], dtype=object)


def read_core_map(path: str | Path) -> CoreMap:
    """Read and check a core map.

    Raises:
        InputError: a missing or unreadable file, a missing column, an empty map, an unsafe or
            repeated core id, an unsafe patient id, a non-finite centre, a radius <= 0, or two
            discs that overlap (a cell between them would belong to both); each names the
            line (header = line 1) and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "core map not found (the sample sheet's 'cores' column)")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"core": str, "patient": str},
                            keep_default_na=False, comment=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable core map (TSV): {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in CORE_MAP_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a core map has the "
                               f"columns {', '.join(CORE_MAP_COLUMNS)} (tab-separated)")
    if table.empty:
        raise InputError(path, "core map has a header but no cores")
    for i, row in table.iterrows():
        where = f"line {i + 2} (core '{row['core']}')"
        for column in ("core", "patient"):
            if not _SAFE_ID.match(str(row[column])):
                raise InputError(path, f"{where}, column '{column}': {row[column]!r} must be "
                                       "letters, digits, '.', '_' or '-'")
        for column in ("x_px", "y_px", "radius_px"):
            value = pd.to_numeric(pd.Series([row[column]]), errors="coerce").iloc[0]
            if not np.isfinite(value) or (column == "radius_px" and value <= 0):
                want = "a positive number" if column == "radius_px" else "a number"
                raise InputError(path, f"{where}, column '{column}': {row[column]!r} is not "
                                       f"{want} (level-0 pixels of the H&E)")
    repeated = table["core"][table["core"].duplicated()]
    if len(repeated):
        core = repeated.iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero(table["core"] == core)]
        raise InputError(path, f"core '{core}' is listed on lines {lines}; give each core one row")
    table = table.astype({"x_px": float, "y_px": float, "radius_px": float})
    _check_discs_apart(path, table)
    return CoreMap(path, table.set_index("core")[list(CORE_MAP_COLUMNS[1:])])


def _check_discs_apart(path: Path, table: pd.DataFrame) -> None:
    from scipy.spatial import cKDTree

    xy = table[["x_px", "y_px"]].to_numpy()
    radius = table["radius_px"].to_numpy()
    for i, j in sorted(cKDTree(xy).query_pairs(2 * radius.max())):
        if np.hypot(*(xy[i] - xy[j])) < radius[i] + radius[j]:
            raise InputError(path, f"cores '{table['core'].iloc[i]}' (line {i + 2}) and "
                                   f"'{table['core'].iloc[j]}' (line {j + 2}) overlap; a cell "
                                   "between them would belong to both: check their centres "
                                   "and radii")


def cohort_patients(sheet: pd.DataFrame, core_patients: Mapping[str, Iterable[str]]) -> list[str]:
    """The cohort's patients, each once in sheet order: a row's ``patient``, or for a TMA row
    (a sample in ``core_patients``) its cores' patients."""
    patients: list[str] = []
    for sample, patient in zip(sheet["sample"], sheet["patient"]):
        patients.extend(core_patients[sample] if sample in core_patients else [patient])
    return list(dict.fromkeys(patients))


def sheet_core_patients(sheet: pd.DataFrame) -> dict[str, list[str]]:
    """Sample -> its cores' patients, for the sheet's tissue-microarray rows (column ``cores``);
    each map is read and checked. (A simulated run's maps do not exist yet:
    :func:`pastflow.simulate.tma.simulated_core_patients` names its patients.)

    Raises:
        InputError: an unreadable or invalid core map.
    """
    return {sample: read_core_map(path).patients
            for sample, path in zip(sheet["sample"], sheet["cores"]) if path}


@dataclass(frozen=True)
class CellPatients:
    """The patient of every cell of a slide: the sheet's patient of the slide, or on a tissue
    microarray (a sample in ``core_maps``) the patient of the core that holds the cell."""

    sample_patient: Mapping[str, str]
    core_maps: Mapping[str, CoreMap] = field(default_factory=dict)

    def of_slide(self, sample: str, source: str | Path) -> str:
        if sample not in self.sample_patient:
            raise InputError(source, f"sample {sample!r} has no patient (not in the sample sheet)")
        return self.sample_patient[sample]

    def of_cells(self, sample: str, x_px: np.ndarray, y_px: np.ndarray,
                 source: str | Path) -> np.ndarray:
        """An object array: each cell's patient ('' for a TMA cell outside every core)."""
        patient = self.of_slide(sample, source)
        if sample not in self.core_maps:
            return np.full(len(x_px), patient, dtype=object)
        cores = self.core_maps[sample]
        return cores.patients_of(cores.assign(x_px, y_px))

    def of_core(self, sample: str, core: str) -> str:
        """The patient of a TMA sample's core ('' for another region or a sample without cores)."""
        cores = self.core_maps.get(sample)
        return str(cores.table["patient"].get(core, "")) if cores is not None else ""


def parse_core_map_args(pairs: Iterable[str]) -> dict[str, CoreMap]:
    """``SAMPLE=PATH`` command-line values -> sample: its checked core map."""
    out = {}
    for pair in pairs:
        sample, sep, path = str(pair).partition("=")
        if not sep or not sample or not path:
            raise InputError(pair, "expected SAMPLE=PATH (a tissue microarray's core map)")
        out[sample] = read_core_map(path)
    return out
