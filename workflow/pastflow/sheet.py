"""Load and validate the sample sheet and the config before any job runs.

Errors name the file, the row (as a 1-based line number of the TSV, header = line 1)
and the column, so a user can fix a 1,000-row sheet without guessing.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from pastflow.contracts import OPTIONAL_SHEET_COLUMNS, SHEET_COLUMNS, SHEET_MPP_COLUMN
from pastflow.errors import InputError
from pastflow.technologies import NAMES as TECHNOLOGY_NAMES
from pastflow.technologies import REGISTRY as TECHNOLOGIES

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
PATH_COLUMNS = ("data", "image", "alignment")


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


def _read_tsv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "sample sheet not found")
    if path.stat().st_size == 0:
        raise InputError(path, "sample sheet is empty")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#",
                            quoting=csv.QUOTE_NONE)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable TSV: {err}") from None
    sheet.columns = [c.strip() for c in sheet.columns]
    missing = [c for c in SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; "
                               f"expected {', '.join(SHEET_COLUMNS)}")
    if sheet.empty:
        raise InputError(path, "sample sheet has a header but no samples")
    for column in OPTIONAL_SHEET_COLUMNS:
        if column not in sheet.columns:
            sheet[column] = ""
    return sheet.apply(lambda col: col.str.strip())


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
                      check_paths: bool = True) -> pd.DataFrame:
    """Read ``samples.tsv``, validate every row, resolve paths against ``data_root``.

    Returns a DataFrame indexed by sample with the columns of :data:`SHEET_COLUMNS` and
    :data:`OPTIONAL_SHEET_COLUMNS` (an optional column the sheet leaves out is all '').
    ``check_paths=False`` skips the existence check (for paths a rule will create,
    e.g. the simulated cohort).
    """
    path = Path(path)
    sheet = _read_tsv(path)
    validator = jsonschema.Draft202012Validator(sample_schema())
    seen: dict[str, int] = {}
    for i, row in enumerate(sheet.to_dict("records")):
        line = i + 2  # header is line 1
        where = f"line {line} (sample '{row.get('sample', '')}')"
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
            column = err.path[0] if err.path else "?"
            raise InputError(path, f"{where}, column '{column}': {_short(err)}")
        if row["sample"] in seen:
            raise InputError(path, f"{where}, column 'sample': duplicate sample id "
                                   f"(first on line {seen[row['sample']]})")
        seen[row["sample"]] = line
        try:
            parse_mpp(row[SHEET_MPP_COLUMN])
        except ValueError as err:
            raise InputError(path, f"{where}, column '{SHEET_MPP_COLUMN}': {err}") from None
        for column in TECHNOLOGIES[row["technology"]].required(row["data"]):
            if not row[column]:
                raise InputError(path, f"{where}, column '{column}': required for "
                                       f"technology '{row['technology']}'")
        for column in PATH_COLUMNS:
            row_path = resolve_path(row[column], data_root)
            sheet.loc[i, column] = row_path
            if check_paths and row_path and not Path(row_path).exists():
                raise InputError(path, f"{where}, column '{column}': "
                                       f"path does not exist: {row_path}")
    return sheet.set_index("sample", drop=False)


def _short(err: jsonschema.ValidationError) -> str:
    if err.validator == "pattern":
        return (f"{err.instance!r} is not a safe name (letters, digits, '.', '_', '-'; "
                "starting with a letter or digit)")
    return re.sub(r"\s+", " ", err.message)
