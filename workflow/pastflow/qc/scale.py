"""The expression scale of QC tables: ``X = log1p(counts / library x target_sum)``.

QC writes its ``target_sum`` (:class:`~pastflow.qc.settings.QCSettings`, counts per 10,000 by
default) into ``uns["pastflow"]["qc"]``; pretraining records it per training sample in the
checkpoint (:mod:`pastflow.models.provenance`) and predict returns values on that scale. A
table written before the setting carries none: it was scaled to its own median depth, a scale
that differs from slide to slide (``None`` here).
"""

from __future__ import annotations

from pathlib import Path

from pastflow.tables import read_pastflow_uns


def uns_target_sum(uns) -> float | None:
    """The ``target_sum`` a QC table's ``uns`` records (None: median-depth scaling)."""
    value = (uns or {}).get("pastflow", {}).get("qc", {}).get("target_sum")
    return None if value is None else float(value)


def table_target_sum(path: str | Path) -> float | None:
    """:func:`uns_target_sum` of an ``.h5ad`` file, read without loading its matrices."""
    value = read_pastflow_uns(path, "QC table", "pastflow/qc").get("target_sum")
    return None if value is None else float(value)


def training_target_sum(training_data: list[dict] | None) -> float | None:
    """The one ``target_sum`` of a checkpoint's training samples (``qc_target_sum`` of each
    row of :func:`pastflow.models.provenance.training_data`); None when the checkpoint records
    none or its samples were scaled differently (median depth, or mixed targets)."""
    values = {row.get("qc_target_sum") for row in training_data or []}
    return float(values.pop()) if len(values) == 1 and None not in values else None
