"""Read and validate a cohort's clinical table: one row per patient, survival time and event.

The table is a TSV (or CSV) with a header and at least the columns ``patient``, ``os_time``
(time from diagnosis to death or last follow-up, in the cohort's unit, e.g. months; >= 0) and
``os_event`` (1 = the event was observed, 0 = censored). Any further columns (age, stage, ...)
are kept as covariates. :func:`read_clinical` checks it against the patients of the sample
sheet before any model sees it; errors name the file, the line (header = line 1), the patient
and the column, as the sample sheet's do.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from pastflow.errors import InputError

log = logging.getLogger(__name__)

CLINICAL_COLUMNS = ("patient", "os_time", "os_event")
_EVENT_VALUES = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}
_SHOWN = 5  # ids listed in an error before "..."


def read_clinical(path: str | Path, patients: Iterable[str]) -> pd.DataFrame:
    """The clinical table at ``path`` for the sample sheet's ``patients``, validated.

    Args:
        path: TSV (``.tsv``, ``.txt``) or CSV (``.csv``) with the columns of
            :data:`CLINICAL_COLUMNS` and optional covariates.
        patients: the sheet's patient ids (repeats allowed: a patient may have several slides).

    Returns:
        DataFrame indexed by ``patient`` in the order the ids first occur in ``patients``:
        ``os_time`` float64 (>= 0, finite), ``os_event`` int64 (0/1), then the covariates as read.
        Rows of patients not in ``patients`` are dropped (logged): a hospital export often
        covers more patients than were scanned.

    Raises:
        InputError: missing, empty or unreadable file; a missing column; a patient listed twice;
            a survival time that is missing, not a number, infinite or negative; an event that
            is missing or not 0/1; a patient of the sheet absent from the table; no event, or
            one survival time for every patient, among the sheet's patients.
    """
    path = Path(path)
    wanted = list(dict.fromkeys(str(p) for p in patients))
    if not wanted:
        raise InputError(path, "no patients to look up (the sample sheet lists none)")
    table = _read_clinical_file(path)
    times, events = [], []
    first_line: dict[str, int] = {}
    for i, row in enumerate(table.to_dict("records")):
        line = i + 2  # header is line 1
        patient = row["patient"]
        where = f"line {line} (patient '{patient}')"
        if not patient:
            raise InputError(path, f"line {line}, column 'patient': empty patient id")
        if patient in first_line:
            raise InputError(path, f"{where}, column 'patient': patient listed twice "
                                   f"(first on line {first_line[patient]})")
        first_line[patient] = line
        times.append(_parse_time(row["os_time"], path, where))
        events.append(_parse_event(row["os_event"], path, where))
    table["os_time"], table["os_event"] = times, events
    table = table.astype({"os_time": "float64", "os_event": "int64"}).set_index("patient")

    absent = [p for p in wanted if p not in table.index]
    if absent:
        raise InputError(path, f"{len(absent)} of the {len(wanted)} patients of the sample sheet "
                               f"are not in the clinical table: {_listing(absent)} "
                               f"(the table has e.g. {_listing(list(table.index))})")
    extra = table.index.difference(wanted, sort=False)
    if len(extra):
        log.warning("%s: %d patients are not in the sample sheet and are left out (%s)", path,
                    len(extra), _listing(list(extra)))
    table = table.loc[wanted]
    _check_outcomes(table, path)
    log.info("%s: %d patients, %d events, follow-up %.3g to %.3g", path, len(table),
             int(table["os_event"].sum()), table["os_time"].min(), table["os_time"].max())
    return table


def _read_clinical_file(path: Path) -> pd.DataFrame:
    """The clinical CSV/TSV as stripped text, with its required columns and >= 1 patient."""
    if not path.is_file():
        raise InputError(path, "clinical table not found")
    if path.stat().st_size == 0:
        raise InputError(path, "clinical table is empty")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        # Everything as text: numbers are parsed below, so that each bad cell is named.
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable {'CSV' if sep == ',' else 'TSV'} ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in CLINICAL_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; expected "
                               f"{', '.join(CLINICAL_COLUMNS)} (and optional covariates); "
                               f"found {', '.join(table.columns)}")
    if table.empty:
        raise InputError(path, "clinical table has a header but no patients")
    return table.apply(lambda column: column.str.strip())


def _check_outcomes(table: pd.DataFrame, path: Path) -> None:
    """Outcomes a Cox model can learn from: without an event, or with one follow-up time for
    everyone, every c-index is undefined (NaN), which must not pass for a result."""
    n = len(table)
    if not table["os_event"].any():
        raise InputError(path, f"column 'os_event': no event among the {n} patients of the "
                               "sample sheet (every os_event is 0); survival needs at least "
                               "one observed event (1)")
    if table["os_time"].nunique() == 1:
        raise InputError(path, f"column 'os_time': every one of the {n} patients of the sample "
                               f"sheet has the survival time {table['os_time'].iloc[0]:g}; "
                               "survival needs follow-up times that differ")


def _parse_time(value: str, path: Path, where: str) -> float:
    if value == "" or value.lower() in ("na", "nan", "none", "null"):
        raise InputError(path, f"{where}, column 'os_time': missing survival time")
    try:
        time = float(value)
    except ValueError:
        raise InputError(path, f"{where}, column 'os_time': {value!r} is not a number") from None
    if not math.isfinite(time):
        raise InputError(path, f"{where}, column 'os_time': survival time must be finite, got {value}")
    if time < 0:
        raise InputError(path, f"{where}, column 'os_time': negative survival time {value}")
    return time


def _parse_event(value: str, path: Path, where: str) -> int:
    if value == "" or value.lower() in ("na", "nan", "none", "null"):
        raise InputError(path, f"{where}, column 'os_event': missing event "
                               "(1 = event observed, 0 = censored)")
    try:
        return _EVENT_VALUES[value.lower()]
    except KeyError:
        raise InputError(path, f"{where}, column 'os_event': {value!r} is not 0 or 1 "
                               "(1 = event observed, 0 = censored)") from None


def _listing(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN else "")
