"""Write the scanned samples as a sample sheet, checked as far as a sheet without patients can be.

Patient and split are left empty for the user (nothing in a vendor folder says which patient a
slide is from, and a split chosen by a tool would hide a leak). Everything else is checked the
way the workflow will check it (:func:`pastflow.sheet.load_sample_sheet`, with placeholder
patients and splits), and each sample's notes are written as ``#`` lines above its row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.contracts import SHEET_COLUMNS, SHEET_MPP_COLUMN
from pastflow.errors import InputError
from pastflow.scan.detect import ScannedSample
from pastflow.technologies import REGISTRY

log = logging.getLogger(__name__)

PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png")  # never record the scanner's pixel size


def slide_mpp(image: Path) -> float | None:
    """The slide's recorded level-0 microns per pixel, from its header (None if it has none)."""
    if image.suffix.lower() in PILLOW_SUFFIXES:
        return None
    from pastflow.slide import open_slide

    with open_slide(image) as slide:
        return slide.mpp


def check_sample(sample: ScannedSample) -> None:
    """Add notes for what the workflow would refuse: missing paths, a slide it cannot open, an
    H&E-only slide with no pixel size."""
    technology = REGISTRY[sample.technology]
    for column in technology.required(sample.data):
        if getattr(sample, column) is None and not any(f"`{column}`" in n for n in sample.notes):
            sample.notes.append(f"fill `{column}` (required for {sample.technology})")
    if sample.image is None:
        return
    try:
        mpp = slide_mpp(sample.image)
    except InputError as err:
        sample.notes.append(f"the image cannot be read: {err.problem}")
        return
    if mpp is None and not technology.has_expression:
        sample.notes.append(f"{sample.image.name} records no microns per pixel: fill the "
                            f"`{SHEET_MPP_COLUMN}` column (or set ingest.mpp)")


def sheet_table(samples: list[ScannedSample]) -> pd.DataFrame:
    """The sheet's rows (patient and split empty, absolute paths, an empty ``mpp`` column)."""
    def text(path: Path | None) -> str:
        return str(path.resolve()) if path is not None else ""

    return pd.DataFrame(
        [{"sample": s.sample, "patient": "", "technology": s.technology, "data": text(s.data),
          "image": text(s.image), "alignment": text(s.alignment), "split": "",
          SHEET_MPP_COLUMN: ""} for s in samples],
        columns=[*SHEET_COLUMNS, SHEET_MPP_COLUMN])


def check_sheet(table: pd.DataFrame, samples: list[ScannedSample], tmp: Path) -> None:
    """The workflow's own sheet checks on complete rows, placeholder patients and splits
    (each sample its own patient, so no split rule can trip on them)."""
    from pastflow.sheet import load_sample_sheet

    complete = [s.sample for s in samples
                if all(getattr(s, c) is not None for c in REGISTRY[s.technology].required(s.data))]
    rows = table.set_index("sample", drop=False).loc[complete].assign(
        patient=lambda t: t["sample"], split="train")
    if rows.empty:
        return
    rows.to_csv(tmp, sep="\t", index=False)
    load_sample_sheet(tmp, check_paths=True)


def write_sheet(samples: list[ScannedSample], out: Path, folder: Path) -> pd.DataFrame:
    """Check ``samples`` and write them to ``out`` (atomically); return the table."""
    for sample in samples:
        check_sample(sample)
    table = sheet_table(samples)
    header = [f"# pastflow sheet --scan {folder.resolve()}",
              "# Fill `patient` (slides of one patient share it) and `split` (train, val or "
              "test) on every row; delete rows that are not samples.",
              "# Lines starting with '#' are comments: the notes below are the scan's."]
    lines = table.to_csv(sep="\t", index=False).splitlines()
    body = [lines[0]]
    for sample, row in zip(samples, lines[1:]):
        body += [f"# {sample.sample}: {note}" for note in sample.notes] + [row]
    with atomic_path(out) as tmp:
        try:
            check_sheet(table, samples, tmp)
        except InputError as err:  # name the sheet being written, not its temporary file
            raise InputError(out, err.problem) from None
        tmp.write_text("\n".join(header + body) + "\n")
    return table
