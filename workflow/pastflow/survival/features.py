"""Patient-level features of each modality, from the per-slide outputs of earlier stages.

A patient with several slides is one row: cells of all its slides are pooled before
averaging (so a larger slide weighs more, as it holds more of the tumour), and H-scores are
averaged over its slides. Column names carry their modality as a prefix:

- ``clinical_<column>``: numeric covariates of the clinical table (age, stage, ...);
  categorical ones one-hot encoded (first level dropped);
- ``image_emb_<i>``: the mean trained image embedding of the patient's cells (reduced by PCA
  inside each training fold, :class:`pastflow.survival.cox.FoldTransform`);
- ``image_cluster_<k>``: the fraction of the patient's cells in each k-means cluster of cell
  image embeddings (a learned "cell-type composition");
- ``molecular_<pathway>``: pathway score of the patient's mean predicted expression;
- ``molecular_hscore_<marker>``: virtual IHC H-score of the slide (stain stage), when given.

On a tissue microarray (a sample with a core map, :mod:`pastflow.cores`) each core is its
patient's tissue: cells are pooled by core patient, H-scores are the cores', and cells outside
every core count for nobody.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from pastflow.cores import CellPatients
from pastflow.errors import InputError
from pastflow.models.pathways import GeneSet, score_pathways
from pastflow.tables import read_h5ad

log = logging.getLogger(__name__)

MODALITY_PREFIXES = {"clinical": "clinical_", "image": "image_", "molecular": "molecular_"}
_SURVIVAL_COLUMNS = ("os_time", "os_event")


def sample_patients(sheet_path: str | Path) -> dict[str, str]:
    """The patient of every slide of the sample sheet: ``{"s1": "P1", "s2": "P1", ...}``.

    The sheet is validated as the workflow validates it (:func:`pastflow.sheet.load_sample_sheet`);
    its paths are neither resolved against ``data_root`` nor checked (only ids are read).

    Raises:
        InputError: a missing or invalid sheet (naming the line and column).
    """
    from pastflow.sheet import load_sample_sheet

    # Only ids are read: whether a patient may span splits is the config's call
    # (split_by_patient), already checked when the workflow started.
    sheet = load_sample_sheet(sheet_path, check_paths=False, split_by_patient=False)
    return dict(zip(sheet["sample"].astype(str), sheet["patient"].astype(str)))


def _sample_of(path: Path, table: ad.AnnData) -> str:
    if "sample" in table.obs and len(table.obs):
        return str(table.obs["sample"].iloc[0])
    return path.name.split(".")[0]


def _read_slide_table(path: str | Path, key: str | None = None) -> tuple[str, ad.AnnData]:
    """``(sample, table)`` of one slide's embedding table (``key``: its ``obsm`` to check)
    or, without ``key``, its prediction table."""
    path = Path(path)
    table = read_h5ad(path, "prediction table" if key is None else "embedding table")
    if key is not None and key not in table.obsm:
        raise InputError(path, f'no obsm["{key}"]; was it written by pastflow embed?')
    if table.n_obs == 0:
        raise InputError(path, "the table has no cells")
    return _sample_of(path, table), table


def _cell_patients(path: str | Path, sample: str, table: ad.AnnData,
                   patients: CellPatients) -> np.ndarray:
    """Each cell's patient ('' for a TMA cell outside every core)."""
    if sample in patients.core_maps and not {"x_px", "y_px"} <= set(table.obs.columns):
        raise InputError(path, "no x_px, y_px cell positions: cannot place cells in the "
                               "tissue microarray's cores")
    obs = table.obs
    x, y = ((obs["x_px"].to_numpy(), obs["y_px"].to_numpy()) if "x_px" in obs
            else (np.zeros(table.n_obs), np.zeros(table.n_obs)))
    return patients.of_cells(sample, x, y, path)


def read_cell_embeddings(paths: Sequence[str | Path], patients: CellPatients, *,
                         key: str = "X_image") -> dict[str, np.ndarray]:
    """Cell embeddings ``float32 (n_cells, d)`` per patient, pooled over its slides.

    Raises:
        InputError: an unreadable table, one without ``obsm[key]``, a sample with no patient,
            or slides of different embedding widths.
    """
    cells: dict[str, list[np.ndarray]] = {}
    width = None
    for path in paths:
        sample, table = _read_slide_table(path, key)
        values = np.asarray(table.obsm[key], dtype=np.float32)
        if width is not None and values.shape[1] != width:
            raise InputError(path, f"embedding width {values.shape[1]} differs from the "
                                   f"other slides' {width}")
        width = values.shape[1]
        who = _cell_patients(path, sample, table, patients)
        for patient in dict.fromkeys(who):
            if patient:
                cells.setdefault(patient, []).append(values[who == patient])
    return {p: np.concatenate(v) for p, v in cells.items()}


def pooled_embedding_features(cells: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Mean cell embedding per patient: ``(n_patients, d)``, columns ``image_emb_<i>``."""
    means = np.stack([v.mean(axis=0) for v in cells.values()])
    return pd.DataFrame(means, index=pd.Index(list(cells), name="patient"),
                        columns=[f"image_emb_{i}" for i in range(means.shape[1])])


def cluster_composition_features(cells: Mapping[str, np.ndarray], n_clusters: int, *,
                                 seed: int,
                                 max_cells_per_patient: int = 2000) -> pd.DataFrame:
    """Fraction of each patient's cells in each of ``n_clusters`` k-means clusters.

    k-means is fitted on the standardised embeddings of at most ``max_cells_per_patient``
    cells per patient (seeded sample; so that large slides do not own the clusters) and
    then assigns every cell. It never sees outcomes, so fitting it on all patients leaks no
    survival information into the cross-validation. Returns ``(n_patients, n_clusters)``,
    rows summing to 1, columns ``image_cluster_<k>``.
    """
    rng = np.random.default_rng(seed)
    sample = np.concatenate([
        v[rng.choice(len(v), min(len(v), max_cells_per_patient), replace=False)]
        for v in cells.values()
    ])
    mean, std = sample.mean(axis=0), sample.std(axis=0) + 1e-6
    kmeans = KMeans(n_clusters, n_init=4, random_state=seed).fit((sample - mean) / std)
    fractions = np.stack([
        np.bincount(kmeans.predict((v - mean) / std), minlength=n_clusters) / len(v)
        for v in cells.values()
    ])
    return pd.DataFrame(fractions, index=pd.Index(list(cells), name="patient"),
                        columns=[f"image_cluster_{k}" for k in range(n_clusters)])


def pathway_features(prediction_paths: Sequence[str | Path], patients: CellPatients,
                     gene_sets: Sequence[GeneSet], *, min_genes: int = 3) -> pd.DataFrame:
    """Pathway scores of each patient's mean predicted expression.

    Each patient's predicted log1p expression is averaged over its cells (all slides), then
    scored with :func:`pastflow.models.pathways.score_pathways` (``mean_z``) across patients:
    the mean z-score of the set's genes. Scoring per cell with ``mean_z`` would z-score within
    a slide and leave every slide's mean at 0. Returns ``(n_patients, n_sets_kept)``,
    columns ``molecular_<set>``.

    Raises:
        InputError: an unreadable table, a sample with no patient, slides predicting
            different genes, or no gene set with ``min_genes`` predicted genes.
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    genes = None
    for path in prediction_paths:
        sample, table = _read_slide_table(path)
        if genes is not None and list(table.var_names) != genes:
            raise InputError(path, "predicts other genes than the cohort's other slides")
        genes = list(table.var_names)
        who = _cell_patients(path, sample, table, patients)
        x = table.X.toarray() if hasattr(table.X, "toarray") else np.asarray(table.X)
        for patient in dict.fromkeys(who):
            if patient:
                mine = who == patient
                sums[patient] = sums.get(patient, 0) + x[mine].sum(axis=0, dtype=np.float64)
                counts[patient] = counts.get(patient, 0) + int(mine.sum())
    means = np.stack([sums[p] / counts[p] for p in sums])
    scores = score_pathways(means, genes, gene_sets, method="mean_z", min_genes=min_genes)
    if not scores.names:
        raise InputError(prediction_paths[0], f"no gene set has {min_genes} or more of the "
                                              f"{len(genes)} predicted genes")
    return pd.DataFrame(scores.scores.astype(np.float64), index=pd.Index(list(sums), name="patient"),
                        columns=[f"molecular_{n}" for n in scores.names])


def hscore_features(paths: Sequence[str | Path], patients: CellPatients) -> pd.DataFrame:
    """Virtual-IHC H-scores per patient from the stain stage's ``hscores.tsv`` files.

    Rows with ``source == "predicted"`` over all cells (available for every slide, H&E-only
    included) are used: ``region == "slide"``, or on a tissue microarray each core's region;
    a patient's slides (or cores) are averaged. Returns
    ``(n_patients, n_markers)``, columns ``molecular_hscore_<marker>``.

    Raises:
        InputError: a file that is missing or lacks the columns sample, marker, region,
            source, hscore; a sample with no patient.
    """
    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "H-score table not found")
        table = pd.read_csv(path, sep="\t")
        missing = {"sample", "marker", "region", "source", "hscore"} - set(table.columns)
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
        table = table[table["source"] == "predicted"]
        if "cells" in table.columns:  # the virtual readout over every cell, not the QC'd ones
            table = table[table["cells"] == "all"]
        table = table.assign(patient=[
            patients.of_core(str(sample), str(region)) if str(sample) in patients.core_maps
            else (patients.of_slide(str(sample), path) if region == "slide" else "")
            for sample, region in zip(table["sample"], table["region"])])
        rows.append(table.loc[table["patient"] != "", ["patient", "marker", "hscore"]])
    if not rows:
        return pd.DataFrame(index=pd.Index([], name="patient"))
    scores = pd.concat(rows).pivot_table(index="patient", columns="marker", values="hscore",
                                         aggfunc="mean")
    scores.columns = [f"molecular_hscore_{m}" for m in scores.columns]
    return scores


def clinical_features(clinical: pd.DataFrame) -> pd.DataFrame:
    """Covariates of a clinical table (from :func:`pastflow.clinical.read_clinical`).

    Columns that parse as numbers are kept as numbers; others with 2-10 levels are one-hot
    encoded (first level dropped); the rest (free text, ids) are left out, with a log line.
    Missing values stay NaN (median-imputed inside each training fold).
    """
    out = {}
    for column in clinical.columns:
        if column in _SURVIVAL_COLUMNS:
            continue
        raw = clinical[column].replace({"": np.nan, "NA": np.nan, "na": np.nan})
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().sum() == raw.notna().sum() and numbers.notna().any():
            out[f"clinical_{column}"] = numbers.astype(np.float64)
            continue
        levels = raw.dropna().unique()
        if 2 <= len(levels) <= 10:
            dummies = pd.get_dummies(raw, prefix=f"clinical_{column}", drop_first=True, dtype=float)
            dummies[raw.isna()] = np.nan
            out.update(dummies.to_dict("series"))
        else:
            log.info("clinical column %r is neither numeric nor categorical (%d levels); left out",
                     column, len(levels))
    return pd.DataFrame(out, index=clinical.index)


def modality_columns(features: pd.DataFrame) -> dict[str, list[str]]:
    """Columns of each modality, and ``combined`` = all of them (modalities with no column
    are left out)."""
    groups = {name: [c for c in features.columns if c.startswith(prefix)]
              for name, prefix in MODALITY_PREFIXES.items()}
    groups = {name: cols for name, cols in groups.items() if cols}
    groups["combined"] = [c for cols in groups.values() for c in cols]
    return groups
