"""Penalised Cox proportional hazards (lifelines) with the penalizer chosen by inner CV.

Everything fitted from data (imputation medians, scaling, PCA of embedding columns, the
penalizer) is fitted on the training patients of a fold only: :class:`FoldTransform` and
:func:`fit_cox` never see a test patient.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold

from pastflow.survival.cv import harrell_cindex

log = logging.getLogger(__name__)

_DURATION, _EVENT = "_time", "_event"


class FoldTransform:
    """Impute, reduce and standardise features with statistics of the training patients.

    Missing values take the training median; the columns whose name starts with a prefix of
    ``pca`` (e.g. ``{"image_emb_": 4}``) are replaced by their first k principal components
    (named ``<prefix>pc1`` ...); then every column is z-scored. Columns constant on the
    training patients are dropped (no information, and they would stall the Cox fit).
    Works on numpy arrays inside (it runs thousands of times per job).
    """

    def __init__(self, pca: Mapping[str, int] | None, *, seed: int):
        self.pca = dict(pca or {})
        self.seed = seed

    def fit(self, features: pd.DataFrame) -> "FoldTransform":
        self.columns_ = list(features.columns)
        values = features.to_numpy(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: median 0
            self.medians_ = np.nan_to_num(np.nanmedian(values, axis=0))
        filled = self._impute(values)
        self.pcas_: list[tuple[np.ndarray, PCA]] = []
        self.names_: list[str] = []
        used = np.zeros(len(self.columns_), bool)
        for prefix, k in self.pca.items():
            members = np.array([c.startswith(prefix) for c in self.columns_])
            k = min(k, int(members.sum()), len(filled) - 1)
            if members.any() and k > 0:
                self.pcas_.append((members, PCA(k, random_state=self.seed).fit(filled[:, members])))
                self.names_ += [f"{prefix}pc{i + 1}" for i in range(k)]
                used |= members
        self.rest_ = ~used
        self.names_ = [c for c, r in zip(self.columns_, self.rest_) if r] + self.names_
        reduced = self._reduce(filled)
        std = reduced.std(axis=0)
        self.keep_ = std > 1e-12
        self.mean_, self.std_ = reduced.mean(axis=0)[self.keep_], std[self.keep_]
        return self

    @property
    def output_columns(self) -> list[str]:
        return [n for n, k in zip(self.names_, self.keep_) if k]

    def transform(self, features: pd.DataFrame) -> pd.DataFrame:
        values = self._impute(features[self.columns_].to_numpy(np.float64))
        out = (self._reduce(values)[:, self.keep_] - self.mean_) / self.std_
        return pd.DataFrame(out, index=features.index, columns=self.output_columns)

    def _impute(self, values: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(values), self.medians_, values)

    def _reduce(self, filled: np.ndarray) -> np.ndarray:
        parts = [filled[:, self.rest_]]
        parts += [pca.transform(filled[:, members]) for members, pca in self.pcas_]
        return np.concatenate(parts, axis=1)


@dataclass
class CoxModel:
    """A fitted Cox model: its preprocessing, the lifelines fitter, the chosen penalizer and
    the inner-CV c-index of every penalizer tried (NaN: the fit failed)."""

    transform: FoldTransform
    fitter: CoxPHFitter
    penalizer: float
    inner_cindex: dict[float, float] = field(default_factory=dict)

    def predict_risk(self, features: pd.DataFrame) -> np.ndarray:
        """Log partial hazard ``(n,)`` of ``features`` (higher = shorter survival)."""
        x = self.transform.transform(features)
        return np.asarray(self.fitter.predict_log_partial_hazard(x), dtype=np.float64)

    @property
    def summary(self) -> pd.DataFrame:
        """lifelines' coefficient table (hazard ratio per standard deviation, 95% CI, p)."""
        return self.fitter.summary


def _fit_lifelines(x: pd.DataFrame, time: np.ndarray, event: np.ndarray,
                   penalizer: float) -> CoxPHFitter:
    frame = x.assign(**{_DURATION: time, _EVENT: event})
    with warnings.catch_warnings():
        # Small cohorts trip lifelines' "complete separation" and convergence warnings;
        # the penalizer is what handles them, and a failed fit is caught by the caller.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return CoxPHFitter(penalizer=penalizer).fit(frame, _DURATION, _EVENT)


def _fit_fixed(features: pd.DataFrame, time, event, penalizer: float,
               pca: Mapping[str, int] | None, seed: int) -> CoxModel:
    transform = FoldTransform(pca, seed=seed).fit(features)
    fitter = _fit_lifelines(transform.transform(features), time, event, penalizer)
    return CoxModel(transform, fitter, penalizer)


def ridge_cox_coefficients(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float,
                           *, max_iter: int = 50, tol: float = 1e-9) -> np.ndarray:
    """Coefficients ``(p,)`` of lifelines' ridge Cox objective, by Newton's method in numpy.

    Maximises ``log PL(b) - n * penalizer * ||b||^2 / 2`` on ``x`` ``(n, p)`` centred and
    divided by its column standard deviations (ddof 1), as :class:`lifelines.CoxPHFitter`
    does with ``l1_ratio=0``; ties are handled by Breslow's approximation (lifelines uses
    Efron's: identical without tied event times). ~1 ms where a lifelines fit takes ~50 ms,
    which matters for the inner-CV grid (``penalizers x inner folds`` fits per outer fold per
    model). The returned coefficients apply to the normalised ``x``.
    """
    x = np.asarray(x, np.float64)
    std = x.std(axis=0, ddof=1)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    n, p = x.shape
    order = np.argsort(-np.asarray(time, np.float64), kind="stable")
    x, t, e = x[order], np.asarray(time, np.float64)[order], np.asarray(event, np.float64)[order]
    # Risk set of patient i (times sorted decreasing): every patient up to the last one
    # whose time equals t_i.
    last = np.searchsorted(-t, -t, side="right") - 1
    outer = x[:, :, None] * x[:, None, :]

    def terms(beta):
        eta = x @ beta
        shift = eta.max()
        w = np.exp(eta - shift)
        s0 = np.cumsum(w)[last]
        s1 = np.cumsum(w[:, None] * x, axis=0)[last]
        s2 = np.cumsum(w[:, None, None] * outer, axis=0)[last]
        ll = (e * (eta - shift - np.log(s0))).sum()
        mean = s1 / s0[:, None]
        grad = (e[:, None] * (x - mean)).sum(axis=0)
        hess = (e[:, None, None] * (s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :])).sum(axis=0)
        return (ll - n * penalizer * beta @ beta / 2, grad - n * penalizer * beta,
                hess + n * penalizer * np.eye(p))

    beta = np.zeros(p)
    objective, grad, hess = terms(beta)
    for _ in range(max_iter):
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while True:  # step halving keeps every iterate an improvement
            candidate = beta + size * step
            new = terms(candidate)
            if new[0] >= objective - 1e-12 or size < 1e-6:
                break
            size /= 2
        beta, (new_objective, grad, hess) = candidate, new
        converged = abs(new_objective - objective) < tol * (1 + abs(objective))
        objective = new_objective
        if converged:
            break
    return beta


def inner_cindex(features: pd.DataFrame, time: np.ndarray, event: np.ndarray, penalizer: float,
                 *, n_splits: int, pca: Mapping[str, int] | None = None,
                 seed: int) -> float:
    """Harrell's c-index of the pooled out-of-fold risks of a ``penalizer`` model over
    ``n_splits`` folds of the given (training) patients, stratified on the event; NaN when a
    fit fails. Fitted with :func:`ridge_cox_coefficients` (lifelines' objective, fast)."""
    risk = np.empty(len(features))
    splits = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    try:
        for train, test in splits.split(features, event):
            transform = FoldTransform(pca, seed=seed).fit(features.iloc[train])
            x_train = transform.transform(features.iloc[train]).to_numpy()
            beta = ridge_cox_coefficients(x_train, time[train], event[train], penalizer)
            # Same normalisation as inside ridge_cox_coefficients (training statistics).
            std = x_train.std(axis=0, ddof=1)
            x_test = transform.transform(features.iloc[test]).to_numpy()
            risk[test] = ((x_test - x_train.mean(axis=0)) / np.where(std > 0, std, 1.0)) @ beta
    except (np.linalg.LinAlgError, ValueError) as err:
        log.debug("penalizer %g failed in inner CV: %s", penalizer, err)
        return float("nan")
    return harrell_cindex(time, event, risk)


def fit_cox(features: pd.DataFrame, time: np.ndarray, event: np.ndarray, *,
            penalizers: Sequence[float], inner_splits: int,
            pca: Mapping[str, int] | None = None, seed: int) -> CoxModel:
    """Fit a ridge-penalised Cox model on ``features`` ``(n_patients, n_features)``.

    Args:
        features: numeric features, one row per patient (NaN allowed: median-imputed).
        time: ``(n,)`` follow-up time; event: ``(n,)`` 1 = event observed, 0 = censored.
        penalizers: the grid; with more than one, each is scored by :func:`inner_cindex`
            on these patients and the best is refitted on all of them (ties: the larger
            penalizer, the simpler model).
        inner_splits: folds of the inner CV (lowered to the number of events when fewer).
        pca: column prefix -> number of principal components (see :class:`FoldTransform`).
        seed: of the inner folds and the PCA.

    Raises:
        RuntimeError: no penalizer of the grid gives a model that converges.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(int)
    scores: dict[float, float] = {}
    grid = sorted(float(p) for p in penalizers)
    splits = min(inner_splits, int(event.sum()), int(len(event) - event.sum()))
    if len(grid) > 1 and splits >= 2:
        scores = {p: inner_cindex(features, time, event, p, n_splits=splits, pca=pca, seed=seed)
                  for p in grid}
        finite = {p: s for p, s in scores.items() if np.isfinite(s)}
        # Largest penalizer among the best: max over (score, penalizer).
        ranked = sorted(finite, key=lambda p: (round(finite[p], 10), p), reverse=True)
        grid = ranked + [p for p in grid if p not in finite]
    else:
        grid = grid[::-1] if len(grid) > 1 else grid
    for penalizer in grid:
        try:
            model = _fit_fixed(features, time, event, penalizer, pca, seed)
        except (ConvergenceError, np.linalg.LinAlgError, ValueError) as err:
            log.debug("penalizer %g failed on all training patients: %s", penalizer, err)
            continue
        model.inner_cindex = scores
        return model
    raise RuntimeError(f"no Cox model converged for penalizers {sorted(penalizers)}")
