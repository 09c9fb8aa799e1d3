"""Time-dependent AUC of cross-validated risks (cumulative/dynamic, IPCW; Uno et al. 2007).

Computed with :func:`sksurv.metrics.cumulative_dynamic_auc` at the quartiles of the observed
event times that lie inside the follow-up, using the whole cohort for the censoring
distribution (the risks are out-of-fold, so no model saw the patient it scores). "Where the
data allow": with fewer than :data:`MIN_EVENTS` events, or no usable time point, nothing is
computed and the reason is returned (:func:`unavailable_reason`: the figures job finds it
again from the outcomes).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.util import Surv

log = logging.getLogger(__name__)

MIN_EVENTS = 5  # fewer events: no td-AUC
ALL_FAILED = "cumulative_dynamic_auc failed for every model"


def evaluation_times(time: np.ndarray, event: np.ndarray,
                     quantiles=(0.25, 0.5, 0.75)) -> np.ndarray:
    """Quantiles of the event times strictly inside ``(min time, max time)`` (IPCW needs
    follow-up beyond each point), unique and sorted; may be empty."""
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    if event.sum() == 0:
        return np.array([])
    points = np.unique(np.quantile(time[event], quantiles))
    return points[(points > time.min()) & (points < time.max())]


def unavailable_reason(time: np.ndarray, event: np.ndarray) -> str | None:
    """Why the data allow no td-AUC (too few events, no usable time point), or None."""
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    if event.sum() < MIN_EVENTS:
        return f"{int(event.sum())} events (< {MIN_EVENTS})"
    if len(evaluation_times(time, event)) == 0:
        return "no event-time quantile inside the follow-up"
    return None


def time_dependent_auc(time: np.ndarray, event: np.ndarray,
                       risks: dict[str, np.ndarray]) -> tuple[pd.DataFrame, str | None]:
    """td-AUC of each model's risk ``(n,)`` (repeat-averaged out-of-fold) at
    :func:`evaluation_times`.

    Returns:
        A table with columns ``model``, ``time``, ``auc`` (one row per model and time; empty
        when not computable) and the reason it is empty (:func:`unavailable_reason`, or
        :data:`ALL_FAILED`), or None.
    """
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    reason = unavailable_reason(time, event)
    if reason is not None:
        return _empty(), reason
    points = evaluation_times(time, event)
    survival = Surv.from_arrays(event, time)
    rows = []
    for model, risk in risks.items():
        try:
            auc, _ = cumulative_dynamic_auc(survival, survival, np.asarray(risk, float), points)
        except ValueError as err:
            # e.g. a time point where no patient is still at risk after censoring weights
            log.warning("td-AUC of %s not computable: %s", model, err)
            continue
        rows += [{"model": model, "time": t, "auc": float(a)} for t, a in zip(points, auc)]
    if not rows:
        return _empty(), ALL_FAILED
    return pd.DataFrame(rows), None


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"model": pd.Series(dtype=str), "time": pd.Series(dtype=float),
                         "auc": pd.Series(dtype=float)})
