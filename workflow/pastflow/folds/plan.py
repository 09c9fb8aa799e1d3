"""The folds of a sample sheet: each sample is the test sample once, the next one (in sheet
order, wrapping round) validates, and the others train (leave-one-section-out, as HER2ST's
five sections of one patient are scored)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError

MIN_SAMPLES = 3  # one to test, one to validate, at least one to train


@dataclass(frozen=True)
class Fold:
    test: str
    val: str
    train: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"test_{self.test}"


def rotate(samples: Sequence[str], source=None) -> list[Fold]:
    """One fold per sample, in order; ``source`` (the sheet) names errors."""
    samples = list(samples)
    if len(samples) < MIN_SAMPLES:
        raise InputError(source, f"{len(samples)} samples: folds need at least {MIN_SAMPLES} "
                                 "(one tested, one validating, one or more training)")
    n = len(samples)
    return [Fold(samples[i], samples[(i + 1) % n],
                 tuple(s for j, s in enumerate(samples) if j not in (i, (i + 1) % n)))
            for i in range(n)]


def read_sheet_rows(path: str | Path) -> pd.DataFrame:
    """The sheet's rows as written (strings, relative paths kept), for rewriting splits."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")


def write_fold_sheet(rows: pd.DataFrame, fold: Fold, path: str | Path) -> Path:
    """``rows`` with the ``split`` column of ``fold`` (train / val / test), atomically."""
    split = {fold.test: "test", fold.val: "val", **{s: "train" for s in fold.train}}
    sheet = rows[rows["sample"].isin(split)].copy()
    sheet["split"] = sheet["sample"].map(split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.to_csv(tmp, sep="\t", index=False)
    return path
