"""The evaluate stage on files: read the cohort's tables, score, write tables and figures.

Outputs (each written atomically):

- ``metrics.tsv``: one row per test sample and method: ``sample``, ``method``,
  ``mean_pearson_50`` (mean r over the 50 most variable genes of the sample), then
  ``n_genes``, ``mean_pearson_markers``, ``n_cells``, ``n_train_cells``;
- ``per_gene.tsv``: ``sample``, ``method``, ``gene``, ``pearson_r``, ``variance_rank``,
  ``top``, ``marker``;
- ``lopo.tsv``: leave-one-patient-out on the training samples
  (:func:`~pastflow.predict.evaluate.evaluate_leave_one_patient_out`);
- ``figures/{sample}/per_gene.png`` and ``figures/{sample}/maps.png`` per test sample.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import anndata as ad
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.models.data import read_qc_table
from pastflow.predict.evaluate import (METHODS, MeasuredSample, evaluate_leave_one_patient_out,
                                       evaluate_sample, join_measured, summarise)
from pastflow.predict.ridge import HEST_COMPONENTS
from pastflow.predict.sample import read_embedding

log = logging.getLogger(__name__)

MAP_METHODS = ("pastflow_head", "pastflow_ridge", "random_encoder")


@dataclass(frozen=True)
class EvaluationFiles:
    """Where :func:`evaluate_cohort` writes."""

    metrics: Path
    per_gene: Path
    lopo: Path
    figures: Path


def read_measured(embedding_path: str | Path, table_path: str | Path) -> MeasuredSample:
    """A sample's embedding table joined to its QC table (sample and patient from the QC
    table's ``uns["pastflow"]``)."""
    embedding = read_embedding(embedding_path)
    qc = read_qc_table(table_path)
    meta = qc.uns.get("pastflow", {})
    name = str(meta.get("sample", Path(table_path).stem))
    try:
        return join_measured(name, str(meta.get("patient", name)), embedding, qc,
                             slide_path=str(embedding.uns.get("pastflow_embed", {})
                                            .get("slide_path", "")))
    except ValueError as err:
        raise InputError(table_path, f"{err} (embeddings: {embedding_path})") from None


def read_head(path: str | Path) -> pd.DataFrame:
    """A predict-stage table as a frame: cells (cell ids) x model genes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prediction table not found")
    table = ad.read_h5ad(path)
    return pd.DataFrame(table.X, index=table.obs["cell_id"].astype(str).to_numpy(),
                        columns=list(table.var_names))


def evaluate_cohort(tests: Sequence[tuple[str, str, str]], train: Sequence[tuple[str, str]],
                    out: EvaluationFiles, *, markers: Sequence[str] = (), n_genes: int = 50,
                    n_components: int = HEST_COMPONENTS, seed: int = 0,
                    figure_samples: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Evaluate every test sample and write ``out``; returns the metrics table.

    Args:
        tests: per test sample ``(embedding table, QC table, prediction table)``.
        train: per training sample ``(embedding table, QC table)``.
        figure_samples: draw figures for the first this many test samples only (``None``:
            all). Drawing costs ~3 s a sample, three times the scoring; a cohort of many
            small test slides is scored in full and illustrated by a few.

    Raises:
        InputError: no test or training sample; an unreadable or mismatched table.
    """
    from tqdm import tqdm

    if not tests:
        raise InputError(None, "no test sample with measured expression to evaluate")
    if not train:
        raise InputError(None, "no training sample with measured expression: the probes and "
                               "the mean baseline need one")
    start = time.perf_counter()
    training = [read_measured(e, t) for e, t in train]
    n_train = sum(len(s) for s in training)
    metrics, per_gene_frames, model_genes = [], [], None
    out.figures.mkdir(parents=True, exist_ok=True)
    for index, (embedding_path, table_path, prediction_path) in enumerate(
            tqdm(tests, desc="evaluate", unit="sample", disable=not progress)):
        test = read_measured(embedding_path, table_path)
        head = read_head(prediction_path)
        model_genes = list(head.columns)
        try:
            per_gene, predictions, genes = evaluate_sample(
                test, training, head, n_genes=n_genes, markers=markers,
                n_components=n_components, seed=seed)
        except ValueError as err:
            raise InputError(prediction_path, str(err)) from None
        summary = summarise(per_gene).assign(sample=test.name, n_cells=len(test),
                                             n_train_cells=n_train)
        metrics.append(summary)
        per_gene_frames.append(per_gene.assign(sample=test.name))
        if figure_samples is None or index < figure_samples:
            _draw(test, per_gene, predictions, genes, markers, out.figures)
        for row in summary.itertuples():
            log.info("%s %-15s mean r over %d genes %.3f (markers %.3f)", test.name, row.method,
                     row.n_genes, row.mean_pearson_50, row.mean_pearson_markers)
    lopo = evaluate_leave_one_patient_out(training, model_genes, n_genes=n_genes,
                                          n_components=n_components, seed=seed)
    metrics_table = pd.concat(metrics, ignore_index=True)[
        ["sample", "method", "mean_pearson_50", "n_genes", "mean_pearson_markers", "n_cells",
         "n_train_cells"]]
    per_gene_table = pd.concat(per_gene_frames, ignore_index=True)[
        ["sample", "method", "gene", "pearson_r", "variance_rank", "top", "marker"]]
    for frame, path in ((metrics_table, out.metrics), (per_gene_table, out.per_gene),
                        (lopo, out.lopo)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    log.info("evaluated %d test samples against %d training cells in %.1f s", len(tests),
             n_train, time.perf_counter() - start)
    return metrics_table


def _draw(test: MeasuredSample, per_gene: pd.DataFrame, predictions: dict, genes: list[str],
          markers: Sequence[str], figures: Path) -> None:
    import matplotlib.pyplot as plt

    from pastflow.predict.plots import plot_marker_maps, plot_per_gene
    from pastflow.thumbnail import read_thumbnail

    folder = figures / test.name
    folder.mkdir(parents=True, exist_ok=True)
    plt.close(plot_per_gene(per_gene, test.name, folder / "per_gene.png"))
    shown = [g for g in markers if g in genes] or genes[:4]  # no marker scored: the top 4
    if not test.slide_path or not Path(test.slide_path).is_file():
        log.warning("%s: slide %r not found; no expression maps", test.name, test.slide_path)
        return
    thumbnail, downsample = read_thumbnail(test.slide_path)
    column = [genes.index(g) for g in shown]
    panels = {"measured": test.columns(shown)}
    panels.update({m: predictions[m][:, column] for m in MAP_METHODS})
    scores = {m: dict(zip(part["gene"], part["pearson_r"]))
              for m, part in per_gene.groupby("method")}
    plt.close(plot_marker_maps(thumbnail, downsample, test.xy, panels, shown, scores, test.name,
                               folder / "maps.png"))


__all__ = ["EvaluationFiles", "evaluate_cohort", "read_measured", "read_head", "METHODS"]
