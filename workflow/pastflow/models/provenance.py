"""What a model was trained on: the identity of every training sample's data.

A checkpoint records, per training sample, its id (the patch store's file name: the
workflow writes ``results/patches/{sample}.h5``) and content fingerprints of its patch store and QC table. Pretraining
resumes a checkpoint only when the training data are the same; embed and predict refuse to
score, as held out, a sample the model was trained on.

Each row also records the unit the sample measures (cell or spot, its diameter and patch
side), so a checkpoint says at which units it learned, and the QC table's normalisation
target (``qc_target_sum``, :mod:`pastflow.qc.scale`): the log1p scale its expression is on.

A fingerprint is cheap and content-based: a hash of the file's size and of its first and
last MiB (HDF5 headers and the newest data sit there), not of the whole file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from pastflow.errors import InputError
from pastflow.qc.scale import table_target_sum

_CHUNK = 1 << 20


def fingerprint(path: str | Path) -> str:
    """``sha256`` hex digest of the file's size, first MiB and last MiB."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "training file not found")
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_CHUNK))
        if size > _CHUNK:
            fh.seek(max(_CHUNK, size - _CHUNK))
            digest.update(fh.read(_CHUNK))
    return digest.hexdigest()


def store_unit(store: str | Path) -> dict:
    """``{unit, unit_diameter_um, patch_um}`` a patch store records (a store written before
    units: a cell store)."""
    import h5py

    with h5py.File(store, "r") as f:
        attrs = dict(f.attrs)
    return {"unit": str(attrs.get("unit", "cell")),
            "unit_diameter_um": float(attrs.get("unit_diameter_um", 0.0)),
            "patch_um": float(attrs.get("patch_um", 0.0))}


def training_data(stores: Sequence[str | Path], tables: Sequence[str | Path]) -> list[dict]:
    """``[{sample, store, table, unit, unit_diameter_um, patch_um, qc_target_sum}]``, one per
    training sample, by sample id: fingerprints of its files, the unit its rows measure and the
    scale of its expression (None: a table scaled to its own median depth)."""
    rows = [{"sample": Path(store).stem, "store": fingerprint(store), "table": fingerprint(table),
             **store_unit(store), "qc_target_sum": table_target_sum(table)}
            for store, table in zip(stores, tables)]
    return sorted(rows, key=lambda row: row["sample"])


def describe_change(before: list[dict] | None, after: list[dict]) -> str:
    """One line saying how two training sets differ (samples added, removed, changed)."""
    if before is None:
        return "the checkpoint records no training data (written before pastflow recorded it)"
    old = {row["sample"]: row for row in before}
    new = {row["sample"]: row for row in after}
    parts = []
    for what, names in (("added", sorted(set(new) - set(old))),
                        ("removed", sorted(set(old) - set(new))),
                        ("changed", sorted(s for s in set(old) & set(new) if old[s] != new[s]))):
        if names:
            parts.append(f"{what}: {', '.join(names)}")
    return "; ".join(parts) or "no change"


def trained_on(training: list[dict] | None) -> set[str]:
    """The sample ids a model was trained on (empty when it records none)."""
    return {row["sample"] for row in training or []}


def check_held_out(training: list[dict] | None, sample: str, split: str | None,
                   model_source: str | Path) -> None:
    """Refuse to treat ``sample`` as held out (``split`` ``test``) when the model was
    trained on it: its scores would be leaked, not measured."""
    if split == "test" and sample in trained_on(training):
        raise InputError(model_source, f"was trained on sample {sample!r}, which the sample "
                                       "sheet now marks 'test': retrain without it (the "
                                       "workflow reruns pretrain when the training samples "
                                       "change) before embedding or predicting it")
