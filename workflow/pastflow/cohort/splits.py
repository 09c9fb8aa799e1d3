"""Patient-level train / val / test splits: a patient's samples always land in one set."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# With fewer patients than sets, the sets that get one, in this order.
FEW_PATIENTS_ORDER = ("train", "test", "val")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, val, test)`` shares of the samples; ValueError unless three numbers >= 0,
    train > 0, summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"fractions {list(fractions)} must be three numbers >= 0 (train > 0) "
                         "summing to 1: train val test")
    return values  # type: ignore[return-value]


def assign_splits(samples_per_patient: Mapping[str, int], fractions: Sequence[float],
                  seed: int = 0) -> dict[str, str]:
    """``{patient: split}`` with about ``fractions`` of the samples in train, val and test.

    Patients are shuffled with ``seed`` and placed largest first, each into the set furthest
    below its share; the last ones fill any set still empty, so with at least as many
    patients as sets of non-zero share every such set gets one. With fewer patients the sets
    are filled in :data:`FEW_PATIENTS_ORDER` (one patient: train; two: train and test), with
    a warning.
    """
    share = dict(zip(SPLITS, check_fractions(fractions)))
    patients = sorted(samples_per_patient)
    shuffled = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    shuffled.sort(key=lambda p: -samples_per_patient[p])  # stable: equal sizes stay shuffled
    active = [s for s in SPLITS if share[s] > 0]
    if len(patients) < len(active):
        active = [s for s in FEW_PATIENTS_ORDER if s in active][:len(patients)]
        log.warning("%d patient(s) for %d sets: only %s get one", len(patients),
                    sum(v > 0 for v in share.values()), ", ".join(active))
    placed = {s: 0 for s in active}
    empty, total, splits = list(active), 0, {}
    for k, patient in enumerate(shuffled):
        size = samples_per_patient[patient]
        candidates = empty if len(shuffled) - k <= len(empty) else active
        best = max(candidates, key=lambda s: share[s] * (total + size) - placed[s])
        splits[patient] = best
        placed[best] += size
        total += size
        if best in empty:
            empty.remove(best)
    return splits
