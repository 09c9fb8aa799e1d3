"""Load and validate the sample sheet and the config before any job runs.

Errors name the file, the row (as a 1-based line number of the TSV, header = line 1)
and the column, so a user can fix a 1,000-row sheet without guessing.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from pastflow.contracts import (OPTIONAL_SHEET_COLUMNS, SHEET_COLUMNS, SHEET_CORES_COLUMN,
                                SHEET_MPP_COLUMN)
from pastflow.errors import InputError
from pastflow.technologies import NAMES as TECHNOLOGY_NAMES
from pastflow.technologies import REGISTRY as TECHNOLOGIES

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
PATH_COLUMNS = ("data", "image", "alignment", SHEET_CORES_COLUMN)


def sample_schema() -> dict:
    """The schema of one sheet row, its technology choices from the registry."""
    with open(SCHEMA_DIR / "samples.schema.yaml") as fh:
        schema = yaml.safe_load(fh)
    schema["properties"]["technology"]["enum"] = list(TECHNOLOGY_NAMES)
    return schema


def resolve_path(value: str, data_root: str | Path) -> str:
    """Sheet paths are relative to ``data_root`` unless absolute; '' stays ''."""
    if not value:
        return ""
    path = Path(value)
    return str(path if path.is_absolute() else Path(data_root) / path)


def _read_tsv(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The sheet as strings, and the file line number of each row.

    Only a line *starting* with ``#`` is a comment (the HEST cohort builder writes a header of
    them); a ``#`` inside a value is data (a folder may be called ``run#2``). Blank lines are
    skipped. Rows keep their real line numbers, so errors point at the line a user opens.
    """
    if not path.is_file():
        raise InputError(path, "sample sheet not found")
    if path.stat().st_size == 0:
        raise InputError(path, "sample sheet is empty")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is not data
    except UnicodeDecodeError as err:
        raise InputError(path, f"not a readable TSV: {err}; save it as UTF-8 text") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.startswith("#")]
    if not lines:
        raise InputError(path, "sample sheet is empty (only comments or blank lines)")
    (header_line, header), rows = lines[0], lines[1:]
    columns = [c.strip() for c in header.split("\t")]
    missing = [c for c in SHEET_COLUMNS if c not in columns]
    if missing:
        raise InputError(path, f"line {header_line}: missing column(s) {', '.join(missing)}; "
                               f"expected {', '.join(SHEET_COLUMNS)} (tab-separated)")
    if len(set(columns)) < len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise InputError(path, f"line {header_line}: column(s) {', '.join(dupes)} appear twice "
                               "in the header; keep one of each")
    if not rows:
        raise InputError(path, "sample sheet has a header but no samples")
    records = []
    for line, text_row in rows:
        values = [v.strip() for v in text_row.split("\t")]
        if len(values) > len(columns):
            raise InputError(path, f"line {line}: {len(values)} tab-separated values but the "
                                   f"header has {len(columns)} columns; remove the extra tabs or "
                                   "add the column to the header")
        # Editors drop trailing empty cells; a required one left empty is caught below by name.
        records.append(values + [""] * (len(columns) - len(values)))
    sheet = pd.DataFrame(records, columns=columns, dtype=str)
    for column in OPTIONAL_SHEET_COLUMNS:
        if column not in sheet.columns:
            sheet[column] = ""
    return sheet, [line for line, _ in rows]


def parse_mpp(value: str) -> float | None:
    """A sheet's (or ``--mpp``'s) resolution: None for '', else a positive finite float.

    Raises:
        ValueError: anything else, with the problem in one line.
    """
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = math.nan
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"{value!r} is not a positive number of microns per pixel (leave it "
                         f"empty to use the config key ingest.mpp)")
    return mpp


def load_sample_sheet(path: str | Path, data_root: str | Path = ".",
                      check_paths: bool = True, split_by_patient: bool = True) -> pd.DataFrame:
    """Read ``samples.tsv``, validate every row, resolve paths against ``data_root``.

    Returns a DataFrame indexed by sample with the columns of :data:`SHEET_COLUMNS` and
    :data:`OPTIONAL_SHEET_COLUMNS` (an optional column the sheet leaves out is all '').
    ``check_paths=False`` skips the existence check (for paths a rule will create,
    e.g. the simulated cohort).

    Besides each row, the sheet as a whole: a patient's slides share one split (train, val or
    test: a patient seen in training must not be scored as unseen) unless
    ``split_by_patient`` is False (config key ``split_by_patient``: a one-patient cohort whose
    held-out unit is a section), and no data folder or image is listed under two samples
    (compared as resolved real paths: one slide counted twice, or a copy-paste slip).

    Raises:
        InputError: naming the file, the line, the column, the problem and the fix.
    """
    path = Path(path)
    sheet, lines = _read_tsv(path)
    validator = jsonschema.Draft202012Validator(sample_schema())
    seen: dict[str, int] = {}
    for i, row in enumerate(sheet.to_dict("records")):
        line = lines[i]
        where = f"line {line} (sample '{row.get('sample', '')}')"
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
            column = err.path[0] if err.path else "?"
            raise InputError(path, f"{where}, column '{column}': {_short(err)}")
        if row["sample"] in seen:
            raise InputError(path, f"{where}, column 'sample': duplicate sample id "
                                   f"(first on line {seen[row['sample']]}); give each slide "
                                   "its own id")
        seen[row["sample"]] = line
        try:
            parse_mpp(row[SHEET_MPP_COLUMN])
        except ValueError as err:
            raise InputError(path, f"{where}, column '{SHEET_MPP_COLUMN}': {err}") from None
        for column in TECHNOLOGIES[row["technology"]].required(row["data"]):
            if not row[column]:
                raise InputError(path, f"{where}, column '{column}': required for "
                                       f"technology '{row['technology']}'; fill in the path")
        for column in PATH_COLUMNS:
            row_path = resolve_path(row[column], data_root)
            sheet.loc[i, column] = row_path
            if check_paths and row_path and not Path(row_path).exists():
                raise InputError(path, f"{where}, column '{column}': "
                                       f"path does not exist: {row_path} (relative paths start "
                                       f"at data_root: {Path(data_root).resolve()})")
    if split_by_patient:
        _check_patient_splits(path, sheet, lines)
    _check_inputs_listed_once(path, sheet, lines)
    return sheet.set_index("sample", drop=False)


def _check_patient_splits(path: Path, sheet: pd.DataFrame, lines: list[int]) -> None:
    """A patient's slides all in one split: else the test score includes a patient the
    model was trained on (the leakage the README promises never happens)."""
    first: dict[str, tuple[str, int]] = {}
    for i, (patient, split) in enumerate(zip(sheet["patient"], sheet["split"])):
        if patient not in first:
            first[patient] = (split, lines[i])
        elif split != first[patient][0]:
            split0, line0 = first[patient]
            raise InputError(path, f"line {lines[i]} (sample '{sheet['sample'].iloc[i]}'), "
                                   f"column 'split': patient '{patient}' is '{split}' here but "
                                   f"'{split0}' on line {line0}; put every slide of a patient "
                                   "in one split (or, for a one-patient cohort that holds out "
                                   "a section, set the config key split_by_patient: false)")


def _check_inputs_listed_once(path: Path, sheet: pd.DataFrame, lines: list[int]) -> None:
    """No data folder or image under two samples: the same slide twice (e.g. once as
    train, once as test under another id) would leak and double-count."""
    for column in ("data", "image", SHEET_CORES_COLUMN):
        owner: dict[str, int] = {}
        for i, value in enumerate(sheet[column]):
            if not value:
                continue
            real = os.path.realpath(value)  # symlinks and ../ spellings of one file are one file
            if real in owner:
                j = owner[real]
                raise InputError(path, f"line {lines[i]} (sample '{sheet['sample'].iloc[i]}'), "
                                       f"column '{column}': {value} is already the {column} of "
                                       f"sample '{sheet['sample'].iloc[j]}' on line {lines[j]}; "
                                       "list each slide once (remove the duplicate row or fix "
                                       "its path)")
            owner[real] = i


def _short(err: jsonschema.ValidationError) -> str:
    if err.instance == "":  # e.g. a sheet from `pastflow sheet --scan` not yet filled in
        return "empty; fill it in"
    if err.validator == "pattern":
        return (f"{err.instance!r} is not a safe name (letters, digits, '.', '_', '-'; "
                "starting with a letter or digit)")
    return re.sub(r"\s+", " ", err.message)
