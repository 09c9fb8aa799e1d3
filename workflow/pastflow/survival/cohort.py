"""The cohort-level survival jobs: patient features, cross-validated models, figures.

Three jobs, each writing its files atomically into one folder (``results/survival``):

``pastflow survival-features`` (:func:`load_cohort`, :func:`write_cohort`):

- ``features.tsv``: patient x features (modality-prefixed), as fed to the models; written at
  full precision, as the models read it back;
- ``outcomes.tsv``: ``patient``, ``os_time``, ``os_event``, in the rows' order;
- ``cells.npz``: the patients' cell image embeddings, for attention-MIL: ``patients``
  (strings), ``counts`` (cells per patient) and ``cells`` (float32, the patients' cells one
  after the other); plain arrays, read without pickle.

``pastflow survival`` (:func:`read_cohort`, :func:`run_survival`):

- ``cindex.tsv``: ``model``, ``cindex``, ``ci_low``, ``ci_high`` (contract; see
  :mod:`pastflow.survival.cv` for how the interval is computed); on simulated cohorts a
  ``true_hazard`` row: the c-index of the known log-hazard, the ceiling a model can reach;
  The ``clinical`` row is the clinical baseline: a Cox model on the clinical table's
  covariates alone (age, stage, ...; numeric as numbers, categorical one-hot), in the same
  folds as the others, since on many cohorts it is the model to beat;
- ``models.tsv``: per model, patients, events, features, the penalizer of the final fit and
  the penalizers chosen in the outer folds, the c-index of every repeat, and the difference
  from the clinical baseline with its paired 95% bootstrap interval
  (``cindex_minus_clinical``, ``minus_clinical_low``, ``minus_clinical_high``);
- ``risk.tsv``: ``patient``, ``os_time``, ``os_event`` and each model's out-of-fold risk
  (log partial hazard, mean over repeats; higher = shorter survival);
- ``coefficients.tsv``: the final combined model (all patients) coefficients, lifelines' summary;
  beside them, ``clinical baseline <column>``: the clinical baseline's own final fit on its
  covariates (empty on the other rows);
- ``td_auc.tsv``: time-dependent AUC per model and time (empty where the data do not allow).

``pastflow survival-figures`` (:func:`read_results`, :func:`pastflow.survival.plots.write_figures`):
``cindex.png``, ``km.png``, ``forest.png``, ``td_auc.png``, from those tables.
"""

from __future__ import annotations

import logging
import time as clock
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.clinical import read_clinical
from pastflow.cores import CellPatients
from pastflow.errors import InputError
from pastflow.models.pathways import default_gmt_path, read_gmt
from pastflow.progress import progress_bar
from pastflow.survival.cox import fit_cox
from pastflow.survival.cv import (CIndex, cross_validated_risk, paired_difference,
                                  patient_folds, summarize_cindex)
from pastflow.survival.features import (cluster_composition_features, clinical_features,
                                        hscore_features, modality_columns, pathway_features,
                                        pooled_embedding_features, read_cell_embeddings)
from pastflow.survival.metrics import time_dependent_auc
from pastflow.survival.mil import MILConfig, fit_mil, mil_config
from pastflow.survival.settings import SurvivalSettings

log = logging.getLogger(__name__)

FEATURE_FILES = ("features.tsv", "outcomes.tsv", "cells.npz")
MODEL_FILES = ("cindex.tsv", "models.tsv", "risk.tsv", "coefficients.tsv", "td_auc.tsv")
FIGURE_FILES = ("cindex.png", "km.png", "forest.png", "td_auc.png")
BASELINE = "clinical"  # the model the others are compared with
BASELINE_PREFIX = "clinical baseline "  # its columns in coefficients.tsv
_BASELINE_COLUMNS = ("coef", "exp(coef)", "exp(coef) lower 95%", "exp(coef) upper 95%", "p")


@dataclass
class CohortData:
    """Patients (rows, in sheet order), their outcomes, features and cell embeddings."""

    patients: list[str]
    time: np.ndarray
    event: np.ndarray
    features: pd.DataFrame
    cells: dict[str, np.ndarray]


@dataclass
class SurvivalResults:
    """The tables of ``pastflow survival`` (the module docstring), as the figures read them."""

    cindex: pd.DataFrame
    models: pd.DataFrame
    risk: pd.DataFrame
    coefficients: pd.DataFrame
    td_auc: pd.DataFrame


# --- features ------------------------------------------------------------------------------

def load_cohort(clinical_path: str | Path, embedding_paths: Sequence[str | Path],
                patients: CellPatients, settings: SurvivalSettings, *,
                prediction_paths: Sequence[str | Path] = (),
                hscore_paths: Sequence[str | Path] = (),
                gene_sets_path: str | Path | None = None) -> CohortData:
    """Read every input and build the patient x feature table of
    :mod:`pastflow.survival.features` (float64; ``gene_sets_path`` None: the default GMT).
    ``patients``: whose each cell is (the sheet's slide patients and any TMA core maps)."""
    cells = read_cell_embeddings(embedding_paths, patients)
    cohort = list(cells)
    clinical = read_clinical(clinical_path, cohort)
    parts = [clinical_features(clinical), pooled_embedding_features(cells),
             cluster_composition_features(cells, settings.clusters, seed=settings.seed)]
    if prediction_paths:
        gene_sets = read_gmt(gene_sets_path or default_gmt_path())
        parts.append(pathway_features(prediction_paths, patients, gene_sets))
    if hscore_paths:
        parts.append(hscore_features(hscore_paths, patients))
    # float64 throughout (the float32 mean embeddings convert exactly), so that the table the
    # models read back from features.tsv is this one, bit for bit.
    features = pd.concat([p.reindex(cohort) for p in parts], axis=1).astype(np.float64)
    features.index.name = "patient"
    missing = features.columns[features.isna().all()]
    if len(missing):
        log.warning("features missing for every patient, left out: %s", ", ".join(missing))
        features = features.drop(columns=missing)
    return CohortData(cohort, clinical["os_time"].to_numpy(float),
                      clinical["os_event"].to_numpy(int), features, cells)


def write_cohort(data: CohortData, out_dir: str | Path) -> None:
    """:data:`FEATURE_FILES` of ``data`` in ``out_dir`` (the module docstring)."""
    out = Path(out_dir)
    outcomes = pd.DataFrame({"patient": data.patients, "os_time": data.time,
                             "os_event": data.event})
    counts = np.array([len(data.cells[p]) for p in data.patients], np.int64)
    with atomic_path(out / "cells.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, patients=np.array(data.patients, dtype=str), counts=counts,
                 cells=np.concatenate([data.cells[p] for p in data.patients]))
    # No float_format: pandas writes the shortest text that reads back as the same float.
    _write_tsv(outcomes, out / "outcomes.tsv", exact=True)
    _write_tsv(data.features, out / "features.tsv", index=True, exact=True)


def read_cohort(features_path: str | Path, outcomes_path: str | Path,
                cells_path: str | Path) -> CohortData:
    """The :class:`CohortData` written by :func:`write_cohort`, exactly.

    Raises:
        InputError: a missing or malformed file, or files of different patients.
    """
    features = _read_tsv(features_path, index_col="patient")
    outcomes = _read_tsv(outcomes_path)
    for column in ("patient", "os_time", "os_event"):
        if column not in outcomes:
            raise InputError(outcomes_path, f"no column '{column}'")
    patients = list(outcomes["patient"])
    if list(features.index) != patients:
        raise InputError(features_path, f"its patients differ from those of {outcomes_path}")
    cells_path = Path(cells_path)
    if not cells_path.is_file():
        raise InputError(cells_path, "cell embeddings not found")
    try:
        with np.load(cells_path, allow_pickle=False) as archive:
            names, counts, values = (archive[k] for k in ("patients", "counts", "cells"))
    except (OSError, KeyError, ValueError) as err:
        raise InputError(cells_path, f"not a cell-embedding archive ({err})") from None
    if list(names) != patients or counts.sum() != len(values):
        raise InputError(cells_path, f"its patients differ from those of {outcomes_path}")
    cells = dict(zip(patients, np.split(values, np.cumsum(counts)[:-1])))
    try:
        features = features.astype(np.float64)
    except ValueError as err:
        raise InputError(features_path, f"a feature that is not a number ({err})") from None
    return CohortData(patients, outcomes["os_time"].to_numpy(float),
                      outcomes["os_event"].to_numpy(int), features, cells)


def read_true_hazard(path: str | Path, patients: Sequence[str]) -> np.ndarray:
    """``log_hazard`` of ``patients`` from a simulated cohort's ``truth_hazard.tsv``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "true-hazard table not found")
    table = pd.read_csv(path, sep="\t", dtype={"patient": str}).set_index("patient")
    if "log_hazard" not in table:
        raise InputError(path, "no column 'log_hazard'")
    absent = [p for p in patients if p not in table.index]
    if absent:
        raise InputError(path, f"patients without a true hazard: {', '.join(absent[:5])}")
    return table.loc[list(patients), "log_hazard"].to_numpy(float)


# --- models --------------------------------------------------------------------------------

def cross_validate_cox(data: CohortData, columns: Sequence[str], folds, settings: SurvivalSettings,
                       progress: bool = True, name: str = "") -> tuple[np.ndarray, list[float]]:
    """Out-of-fold risks ``(repeats, n_patients)`` of a Cox model on ``columns``, and the
    penalizer inner CV chose in each outer fold."""
    features = data.features[list(columns)]
    chosen: list[float] = []
    bar = progress_bar(total=len(folds), desc=f"cox {name}", unit="fold", enabled=progress)

    def fit_predict(train, test):
        model = _fit_cox(features.iloc[train], data.time[train], data.event[train], settings)
        chosen.append(model.penalizer)
        bar.update()
        return model.predict_risk(features.iloc[test])

    risks = cross_validated_risk(fit_predict, folds, len(data.patients))
    bar.close()
    return risks, chosen


def _fit_cox(features: pd.DataFrame, time: np.ndarray, event: np.ndarray,
             settings: SurvivalSettings):
    return fit_cox(features, time, event, penalizers=settings.penalizers,
                   inner_splits=settings.inner_folds,
                   pca={"image_emb_": settings.pca_components}, seed=settings.seed)


def cross_validate_mil(data: CohortData, folds, config: MILConfig,
                       progress: bool = True) -> np.ndarray:
    """Out-of-fold risks ``(repeats, n_patients)`` of :func:`pastflow.survival.mil.fit_mil`."""
    bags = [data.cells[p] for p in data.patients]
    bar = progress_bar(total=len(folds), desc="attention-MIL", unit="fold", enabled=progress)

    def fit_predict(train, test):
        model = fit_mil([bags[i] for i in train], data.time[train], data.event[train], config)
        bar.update()
        # The Cox loss ignores a shift of all risks: centre on the training patients so that
        # folds pool on one scale (lifelines' predictions are centred the same way).
        offset = model.predict_risk([bags[i] for i in train]).mean()
        return model.predict_risk([bags[i] for i in test]) - offset

    risks = cross_validated_risk(fit_predict, folds, len(data.patients))
    bar.close()
    return risks


def cross_validate_models(data: CohortData, settings: SurvivalSettings, *,
                          true_hazard: np.ndarray | None = None,
                          progress: bool = True) -> SurvivalResults:
    """Cross-validate a Cox model per modality and combined, and attention-MIL (unless
    ``mil_epochs`` is 0), on the same folds; fit the final combined model on every patient."""
    start = clock.time()
    folds = patient_folds(data.patients, data.event, n_splits=settings.folds,
                          n_repeats=settings.repeats, seed=settings.seed)
    log.info("%d patients, %d events, %d features; %d folds x %d repeats", len(data.patients),
             int(data.event.sum()), data.features.shape[1], max(f.fold for f in folds) + 1,
             settings.repeats)
    groups = modality_columns(data.features)
    risks: dict[str, np.ndarray] = {}
    model_rows = []
    for name, columns in groups.items():
        risks[name], chosen = cross_validate_cox(data, columns, folds, settings, progress, name)
        n_embedding = sum(c.startswith("image_emb_") for c in columns)
        n_features = len(columns) - n_embedding + min(n_embedding, settings.pca_components)
        model_rows.append({"model": name, "n_features": n_features,
                           "outer_penalizers": _counts(chosen)})
    mil = mil_config(settings)
    if mil is not None:
        risks["image_mil"] = cross_validate_mil(data, folds, mil, progress)
        model_rows.append({"model": "image_mil",
                           "n_features": next(iter(data.cells.values())).shape[1],
                           "outer_penalizers": ""})
    if true_hazard is not None:
        risks["true_hazard"] = np.asarray(true_hazard, float)[None, :]
        model_rows.append({"model": "true_hazard", "n_features": 1, "outer_penalizers": ""})

    summaries: dict[str, CIndex] = {
        name: summarize_cindex(data.time, data.event, r, n_boot=settings.bootstrap,
                               seed=settings.seed)
        for name, r in risks.items()}
    rows = []
    for name, s in summaries.items():
        rows.append({"model": name, "cindex": s.cindex, "ci_low": s.ci_low, "ci_high": s.ci_high})
        log.info("%-12s c-index %.3f (95%% CI %.3f-%.3f)", name, s.cindex, s.ci_low, s.ci_high)
    cindex = pd.DataFrame(rows)

    final = _fit_cox(data.features[groups["combined"]], data.time, data.event, settings)
    coefficients, penalizers = final.summary, {"combined": final.penalizer}
    if BASELINE in groups:
        baseline = _fit_cox(data.features[groups[BASELINE]], data.time, data.event, settings)
        penalizers[BASELINE] = baseline.penalizer
        coefficients = coefficients.join(
            baseline.summary[list(_BASELINE_COLUMNS)].add_prefix(BASELINE_PREFIX))
    else:
        log.info("the clinical table has no covariate beyond os_time and os_event: no "
                 "clinical baseline")
    models = pd.DataFrame(model_rows)
    models["n_patients"], models["n_events"] = len(data.patients), int(data.event.sum())
    models["final_penalizer"] = [penalizers.get(m, np.nan) for m in models["model"]]
    models["cindex_per_repeat"] = [",".join(f"{c:.4f}" for c in summaries[m].per_repeat)
                                   for m in models["model"]]
    deltas = [paired_difference(summaries[m], summaries[BASELINE])
              if BASELINE in summaries and m != BASELINE else (np.nan,) * 3
              for m in models["model"]]
    models["cindex_minus_clinical"], models["minus_clinical_low"], \
        models["minus_clinical_high"] = (list(column) for column in zip(*deltas))
    mean_risk = {name: r.mean(axis=0) for name, r in risks.items()}
    td_auc, _ = time_dependent_auc(data.time, data.event, mean_risk)
    risk = pd.DataFrame({"patient": data.patients, "os_time": data.time, "os_event": data.event,
                         **mean_risk})
    log.info("survival: models done in %.1f s", clock.time() - start)
    return SurvivalResults(cindex, models, risk, coefficients, td_auc)


def write_results(results: SurvivalResults, out_dir: str | Path) -> None:
    """:data:`MODEL_FILES` in ``out_dir``; ``cindex.tsv`` last (it marks a finished job)."""
    out = Path(out_dir)
    _write_tsv(results.risk, out / "risk.tsv")
    _write_tsv(results.models, out / "models.tsv")
    _write_tsv(results.coefficients, out / "coefficients.tsv", index=True)
    _write_tsv(results.td_auc, out / "td_auc.tsv")
    _write_tsv(results.cindex, out / "cindex.tsv")


def run_survival(data: CohortData, out_dir: str | Path, settings: SurvivalSettings, *,
                 true_hazard: np.ndarray | None = None, progress: bool = True) -> pd.DataFrame:
    """:func:`cross_validate_models` and :func:`write_results`; returns the ``cindex.tsv``
    table."""
    results = cross_validate_models(data, settings, true_hazard=true_hazard, progress=progress)
    write_results(results, out_dir)
    return results.cindex


def read_results(cindex: str | Path, models: str | Path, risk: str | Path,
                 coefficients: str | Path, td_auc: str | Path) -> SurvivalResults:
    """The tables written by :func:`write_results`.

    Raises:
        InputError: a missing or empty table.
    """
    return SurvivalResults(_read_tsv(cindex), _read_tsv(models), _read_tsv(risk),
                           _read_tsv(coefficients, index_col=0),
                           _read_tsv(td_auc, allow_empty=True))


# --- tables --------------------------------------------------------------------------------

def _counts(values: Sequence[float]) -> str:
    return ",".join(f"{p:g}:{n}" for p, n in sorted(Counter(values).items()))


def _write_tsv(table: pd.DataFrame, path: Path, index: bool = False, exact: bool = False) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=index, float_format=None if exact else "%.6g")


def _read_tsv(path: str | Path, index_col=None, allow_empty: bool = False) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "table not found")
    try:
        table = pd.read_csv(path, sep="\t", index_col=index_col, dtype={"patient": str},
                            float_precision="round_trip")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise InputError(path, f"not a readable table ({err})") from None
    if table.empty and not allow_empty:
        raise InputError(path, "the table has no rows")
    return table
