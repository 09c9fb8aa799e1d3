"""A sample sheet for a HEST-1k cohort: ``pastflow cohort hest``.

The HEST metadata table (``HEST_v1_1_0.csv``: one row per sample; ``id``, ``st_technology``,
``patient``, ``organ``, ``species``, ``oncotree_code``, ...) is filtered with a pandas query
on its columns; every selected sample becomes a sheet row of technology ``hest`` whose paths
are relative to the HEST root (``data_root`` of the config): ``data`` = ``st/<id>.h5ad``,
``image`` = ``wsis/<id>.tif`` (:mod:`pastflow.hest_layout`).

Patients: HEST's ``patient`` labels ("Patient 1", ...) are unique only within a study, so a
patient is its label (case and spaces ignored) within its study (``study_link``, else
``dataset_title``); the sheet's id is that label made safe plus a short hash of the pair.
A sample without a label is its own patient (serial sections of one unlabelled patient may
then fall in different sets: the builder says how many samples have no label).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.cohort.splits import assign_splits, check_fractions
from pastflow.contracts import SHEET_COLUMNS
from pastflow.errors import InputError
from pastflow.hest_layout import ST_TECHNOLOGIES, XENIUM, HestPaths

log = logging.getLogger(__name__)

TECHNOLOGY = "hest"  # the sheet's technology for every HEST sample (pastflow.technologies)
REQUIRED_COLUMNS = ("id", "st_technology", "patient")
STUDY_COLUMNS = ("study_link", "dataset_title")  # the first non-empty one names the study
HEST_DATA_URL = "https://huggingface.co/datasets/MahmoodLab/hest"


def read_metadata_table(path: str | Path) -> pd.DataFrame:
    """The HEST metadata CSV (UTF-8 with a byte-order mark), one row per sample id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "HEST metadata table not found")
    try:
        table = pd.read_csv(path, encoding="utf-8-sig",
                            dtype={"id": str, "patient": str, **{c: str for c in STUDY_COLUMNS}})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable CSV ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a HEST metadata table "
                               f"has {', '.join(REQUIRED_COLUMNS)}, organ, species, ...")
    if table["id"].duplicated().any():
        raise InputError(path, f"duplicate sample ids: {table['id'][table['id'].duplicated()].tolist()[:5]}")
    return table


def select(table: pd.DataFrame, where: str | None, source: Path) -> pd.DataFrame:
    """The rows matching the pandas query ``where`` (all when None)."""
    if where:
        try:
            table = table.query(where)
        except Exception as err:  # pandas raises many types (SyntaxError, NameError, ValueError...)
            raise InputError(source, f"--where {where!r} is not a query on the metadata columns "
                                     f"({type(err).__name__}: {err}); columns: "
                                     f"{', '.join(map(str, table.columns))}") from None
        if table.empty:
            raise InputError(source, f"--where {where!r} matches no sample")
    unknown = table.loc[~table["st_technology"].isin(ST_TECHNOLOGIES)]
    if len(unknown):
        raise InputError(source, f"{len(unknown)} sample(s) of a technology pastflow does not read "
                                 f"as HEST ({', '.join(ST_TECHNOLOGIES)}): "
                                 f"{dict(zip(unknown['id'][:5], unknown['st_technology'][:5]))}")
    return table


def patient_ids(table: pd.DataFrame) -> pd.Series:
    """The sheet's patient id of every sample (index aligned with ``table``)."""
    label = table["patient"].fillna("").astype(str).str.strip()
    study = pd.Series("", index=table.index)
    for column in reversed([c for c in STUDY_COLUMNS if c in table.columns]):
        value = table[column].fillna("").astype(str).str.strip()
        study = value.where(value != "", study)
    ids = []
    for sample, name, where in zip(table["id"], label, study):
        if not name:
            ids.append(sample)
            continue
        key = re.sub(r"\s+", "", name).lower()
        digest = hashlib.sha1(f"{where}\x1f{key}".encode()).hexdigest()[:8]
        ids.append(f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key).strip('._-') or 'patient'}.{digest}")
    return pd.Series(ids, index=table.index)


def missing_files(ids: Sequence[str], root: Path) -> list[str]:
    """Every file the reader needs (st/, wsis/, metadata/) that is not under ``root``."""
    missing = []
    for sample in ids:
        paths = HestPaths(root, sample)
        missing += [str(p.relative_to(root)) for p in (paths.st, paths.wsi, paths.metadata)
                    if not p.is_file()]
    return missing


def build_hest_sheet(metadata: str | Path, root: str | Path, out: str | Path,
                     where: str | None = None, seed: int = 0,
                     fractions: Sequence[float] = (0.6, 0.2, 0.2),
                     allow_missing: bool = False) -> pd.DataFrame:
    """Write the sample sheet ``out`` of the HEST samples matching ``where``; return it.

    Splits are patient-level (:func:`pastflow.cohort.splits.assign_splits`, seeded). Every
    file the samples need must exist under ``root`` (all missing ones are listed in one
    :class:`InputError`) unless ``allow_missing``: then the sheet is written anyway, to
    build it before downloading, and the workflow's sheet check stops a run until they
    exist. The sheet is checked with :func:`pastflow.sheet.load_sample_sheet` before it is
    renamed into place.
    """
    from pastflow.sheet import load_sample_sheet

    metadata, root, out = Path(metadata), Path(root).resolve(), Path(out)
    try:
        fractions = check_fractions(fractions)
    except ValueError as err:
        raise InputError(None, f"--fractions: {err}") from None
    table = select(read_metadata_table(metadata), where, metadata)
    missing = missing_files(table["id"], root)
    if missing and not allow_missing:
        raise InputError(root, f"{len(missing)} file(s) of the {len(table)} selected samples are "
                               f"missing (download them from {HEST_DATA_URL}, or pass "
                               "--allow-missing to write the sheet first):\n  "
                               + "\n  ".join(missing))
    if missing:
        log.warning("%d file(s) of the %d samples are missing under %s; the sheet is written, "
                    "and the workflow refuses to run until they exist:\n  %s", len(missing),
                    len(table), root, "\n  ".join(missing))
    patients = patient_ids(table)
    splits = assign_splits(patients.value_counts().to_dict(), fractions, seed)
    sheet = pd.DataFrame({
        "sample": table["id"].to_numpy(), "patient": patients.to_numpy(),
        "technology": TECHNOLOGY,
        "data": [str(HestPaths(Path(), s).st) for s in table["id"]],
        "image": [str(HestPaths(Path(), s).wsi) for s in table["id"]],
        "alignment": "", "split": patients.map(splits).to_numpy()})[list(SHEET_COLUMNS)]
    header = [f"# HEST-1k cohort: pastflow cohort hest --metadata {metadata.resolve()}",
              f"#   --where {' '.join(str(where).split()) if where else '(every sample)'} "
              f"--seed {seed} --fractions {' '.join(f'{f:g}' for f in fractions)}",
              f"# paths are relative to the HEST root: set `data_root: {root}` in the config"]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(header) + "\n" + sheet.to_csv(sep="\t", index=False))
        try:
            load_sample_sheet(tmp, data_root=root, check_paths=not allow_missing)
        except InputError as err:  # name the sheet being written, not its temporary file
            raise InputError(out, err.problem) from None
    _log_summary(table, sheet, patients, root)
    return sheet


def _log_summary(table: pd.DataFrame, sheet: pd.DataFrame, patients: pd.Series, root: Path) -> None:
    by_split = sheet.groupby("split")["patient"].agg(["size", "nunique"])
    log.info("HEST cohort: %d samples of %d patients; %s; %s", len(sheet), patients.nunique(),
             ", ".join(f"{s} {r['size']} samples / {r['nunique']} patients"
                       for s, r in by_split.iterrows()),
             ", ".join(f"{t} {n}" for t, n in table["st_technology"].value_counts().items()))
    unlabelled = int((patients == table["id"]).sum())
    if unlabelled:
        log.warning("%d of %d samples have no patient label: each is its own patient (serial "
                    "sections of one patient may fall in different sets)", unlabelled, len(sheet))
    xenium = table.loc[table["st_technology"] == XENIUM, "id"]
    no_cells = [s for s in xenium if not (HestPaths(root, s).cell_seg.is_file()
                                          and HestPaths(root, s).transcripts.is_file())]
    if no_cells:
        log.warning("%d of %d Xenium samples lack xenium_seg/ or transcripts/ under %s: they "
                    "will be ingested as HEST's pseudo-spots, not cells", len(no_cells),
                    len(xenium), root)
