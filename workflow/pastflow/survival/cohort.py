"""The cohort-level survival job (``pastflow survival``): features, cross-validated models,
tables and figures.

Outputs in ``out_dir`` (written atomically):

- ``cindex.tsv``: ``model``, ``cindex``, ``ci_low``, ``ci_high`` (contract; see
  :mod:`pastflow.survival.cv` for how the interval is computed); on simulated cohorts a
  ``true_hazard`` row: the c-index of the known log-hazard, the ceiling a model can reach;
- ``models.tsv``: per model, patients, events, features, the penalizer of the final fit and
  the penalizers chosen in the outer folds, the c-index of every repeat;
- ``features.tsv``: patient x features (modality-prefixed), as fed to the models;
- ``risk.tsv``: ``patient``, ``os_time``, ``os_event`` and each model's out-of-fold risk
  (log partial hazard, mean over repeats; higher = shorter survival);
- ``coefficients.tsv``: the final combined model (all patients) coefficients, lifelines' summary;
- ``td_auc.tsv``: time-dependent AUC per model and time (empty where the data do not allow);
- ``km.png``, ``forest.png``, ``cindex.png``, ``td_auc.png``.
"""

from __future__ import annotations

import logging
import time as clock
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pastflow.atomic import atomic_path
from pastflow.clinical import read_clinical
from pastflow.errors import InputError
from pastflow.models.pathways import default_gmt_path, read_gmt
from pastflow.survival.cox import DEFAULT_PENALIZERS, fit_cox
from pastflow.survival.cv import (CIndex, cross_validated_risk, patient_folds,
                                  summarize_cindex)
from pastflow.survival.features import (cluster_composition_features, clinical_features,
                                        hscore_features, modality_columns, pathway_features,
                                        pooled_embedding_features, read_cell_embeddings)
from pastflow.survival.metrics import time_dependent_auc
from pastflow.survival.mil import MILConfig, fit_mil
from pastflow.survival.plots import (km_figure, plot_cindex, plot_forest, plot_td_auc,
                                     save_figure)

log = logging.getLogger(__name__)

OUTPUT_FILES = ("cindex.tsv", "models.tsv", "features.tsv", "risk.tsv", "coefficients.tsv",
                "td_auc.tsv", "km.png", "forest.png", "cindex.png", "td_auc.png")


@dataclass
class SurvivalSettings:
    """Cross-validation and feature settings (defaults sized for ~50 patients).

    ``pca_components`` and ``n_clusters`` were measured on the default simulated cohort (46
    patients, 20 events; image / combined c-index): PCs 2, 4, 8 x clusters 4, 6, 8 gave
    0.68-0.72 / 0.75-0.77, best at 4 PCs and 8 clusters (0.718 / 0.768) -- differences
    within the noise of 46 patients, so they are sensible rather than tuned values.
    """

    n_splits: int = 5
    n_repeats: int = 3
    inner_splits: int = 3
    penalizers: Sequence[float] = DEFAULT_PENALIZERS
    pca_components: int = 4     # PCs of the mean image embedding, fitted in each training fold
    n_clusters: int = 8         # k-means clusters of cell image embeddings
    n_boot: int = 1000          # bootstrap resamples of the c-index interval
    seed: int = 0
    mil: MILConfig | None = field(default_factory=MILConfig)  # None: no image_mil model


@dataclass
class CohortData:
    """Patients (rows, in sheet order), their outcomes, features and cell embeddings."""

    patients: list[str]
    time: np.ndarray
    event: np.ndarray
    features: pd.DataFrame
    cells: dict[str, np.ndarray]


def load_cohort(clinical_path: str | Path, embedding_paths: Sequence[str | Path],
                sample_patient: Mapping[str, str], *,
                prediction_paths: Sequence[str | Path] = (),
                hscore_paths: Sequence[str | Path] = (),
                gene_sets_path: str | Path | None = None,
                settings: SurvivalSettings = SurvivalSettings()) -> CohortData:
    """Read every input and build the patient x feature table of
    :mod:`pastflow.survival.features`."""
    cells = read_cell_embeddings(embedding_paths, sample_patient)
    patients = list(cells)
    clinical = read_clinical(clinical_path, patients)
    parts = [clinical_features(clinical), pooled_embedding_features(cells),
             cluster_composition_features(cells, settings.n_clusters, seed=settings.seed)]
    if prediction_paths:
        gene_sets = read_gmt(gene_sets_path or default_gmt_path())
        parts.append(pathway_features(prediction_paths, sample_patient, gene_sets))
    if hscore_paths:
        parts.append(hscore_features(hscore_paths, sample_patient))
    features = pd.concat([p.reindex(patients) for p in parts], axis=1)
    features.index.name = "patient"
    missing = features.columns[features.isna().all()]
    if len(missing):
        log.warning("features missing for every patient, left out: %s", ", ".join(missing))
        features = features.drop(columns=missing)
    return CohortData(patients, clinical["os_time"].to_numpy(float),
                      clinical["os_event"].to_numpy(int), features, cells)


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


def cross_validate_cox(data: CohortData, columns: Sequence[str], folds, settings: SurvivalSettings,
                       progress: bool = True, name: str = "") -> tuple[np.ndarray, list[float]]:
    """Out-of-fold risks ``(n_repeats, n_patients)`` of a Cox model on ``columns``, and the
    penalizer inner CV chose in each outer fold."""
    features = data.features[list(columns)]
    chosen: list[float] = []
    bar = tqdm(total=len(folds), desc=f"cox {name}", disable=not progress)

    def fit_predict(train, test):
        model = fit_cox(features.iloc[train], data.time[train], data.event[train],
                        penalizers=settings.penalizers, inner_splits=settings.inner_splits,
                        pca={"image_emb_": settings.pca_components}, seed=settings.seed)
        chosen.append(model.penalizer)
        bar.update()
        return model.predict_risk(features.iloc[test])

    risks = cross_validated_risk(fit_predict, folds, len(data.patients))
    bar.close()
    return risks, chosen


def cross_validate_mil(data: CohortData, folds, config: MILConfig,
                       progress: bool = True) -> np.ndarray:
    """Out-of-fold risks ``(n_repeats, n_patients)`` of :func:`pastflow.survival.mil.fit_mil`."""
    bags = [data.cells[p] for p in data.patients]
    bar = tqdm(total=len(folds), desc="attention-MIL", disable=not progress)

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


def run_survival(data: CohortData, out_dir: str | Path, *, true_hazard: np.ndarray | None = None,
                 settings: SurvivalSettings = SurvivalSettings(),
                 progress: bool = True) -> pd.DataFrame:
    """Cross-validate every model on ``data`` and write the outputs of the module docstring.

    Returns the ``cindex.tsv`` table.
    """
    start = clock.time()
    folds = patient_folds(data.patients, data.event, n_splits=settings.n_splits,
                          n_repeats=settings.n_repeats, seed=settings.seed)
    log.info("%d patients, %d events, %d features; %d folds x %d repeats", len(data.patients),
             int(data.event.sum()), data.features.shape[1], max(f.fold for f in folds) + 1,
             settings.n_repeats)
    groups = modality_columns(data.features)
    risks: dict[str, np.ndarray] = {}
    rows, model_rows = [], []
    for name, columns in groups.items():
        risks[name], chosen = cross_validate_cox(data, columns, folds, settings, progress, name)
        n_embedding = sum(c.startswith("image_emb_") for c in columns)
        n_features = len(columns) - n_embedding + min(n_embedding, settings.pca_components)
        model_rows.append({"model": name, "n_features": n_features,
                           "outer_penalizers": _counts(chosen)})
    if settings.mil is not None:
        risks["image_mil"] = cross_validate_mil(data, folds, settings.mil, progress)
        model_rows.append({"model": "image_mil", "n_features": next(iter(data.cells.values())).shape[1],
                           "outer_penalizers": ""})
    if true_hazard is not None:
        risks["true_hazard"] = np.asarray(true_hazard, float)[None, :]
        model_rows.append({"model": "true_hazard", "n_features": 1, "outer_penalizers": ""})

    summaries: dict[str, CIndex] = {
        name: summarize_cindex(data.time, data.event, r, n_boot=settings.n_boot, seed=settings.seed)
        for name, r in risks.items()}
    for name, s in summaries.items():
        rows.append({"model": name, "cindex": s.cindex, "ci_low": s.ci_low, "ci_high": s.ci_high})
        log.info("%-12s c-index %.3f (95%% CI %.3f-%.3f)", name, s.cindex, s.ci_low, s.ci_high)
    cindex = pd.DataFrame(rows)

    final = fit_cox(data.features[groups["combined"]], data.time, data.event,
                    penalizers=settings.penalizers, inner_splits=settings.inner_splits,
                    pca={"image_emb_": settings.pca_components}, seed=settings.seed)
    models = pd.DataFrame(model_rows)
    models["n_patients"], models["n_events"] = len(data.patients), int(data.event.sum())
    models["final_penalizer"] = [final.penalizer if m == "combined" else np.nan for m in models["model"]]
    models["cindex_per_repeat"] = [",".join(f"{c:.4f}" for c in summaries[m].per_repeat)
                                   for m in models["model"]]
    mean_risk = {name: r.mean(axis=0) for name, r in risks.items()}
    td_auc, reason = time_dependent_auc(data.time, data.event, mean_risk)
    _write_outputs(Path(out_dir), data, cindex, models, mean_risk, final, td_auc, reason)
    log.info("survival: done in %.1f s", clock.time() - start)
    return cindex


def _counts(values: Sequence[float]) -> str:
    return ",".join(f"{p:g}:{n}" for p, n in sorted(Counter(values).items()))


def _write_tsv(table: pd.DataFrame, path: Path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=index, float_format="%.6g")


def _write_outputs(out: Path, data: CohortData, cindex: pd.DataFrame, models: pd.DataFrame,
                   mean_risk: dict[str, np.ndarray], final, td_auc: pd.DataFrame,
                   reason: str | None) -> None:
    risk = pd.DataFrame({"patient": data.patients, "os_time": data.time, "os_event": data.event,
                         **mean_risk})
    _write_tsv(data.features, out / "features.tsv", index=True)
    _write_tsv(risk, out / "risk.tsv")
    _write_tsv(models, out / "models.tsv")
    _write_tsv(final.summary, out / "coefficients.tsv", index=True)
    _write_tsv(td_auc, out / "td_auc.tsv")

    fig, _ = km_figure(data.time, data.event, mean_risk)
    save_figure(fig, out / "km.png")
    summary = final.summary
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.28 * len(summary)))
    plot_forest(summary, ax, title=f"combined model, all {len(data.patients)} patients "
                                   f"(penalizer {final.penalizer:g})")
    fig.tight_layout()
    save_figure(fig, out / "forest.png")
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.45 * len(cindex)))
    plot_cindex(cindex, ax)
    fig.tight_layout()
    save_figure(fig, out / "cindex.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_td_auc(td_auc, ax, reason)
    fig.tight_layout()
    save_figure(fig, out / "td_auc.png")
    # cindex.tsv last: its presence means the whole job finished.
    _write_tsv(cindex, out / "cindex.tsv")
