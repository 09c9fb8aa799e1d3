"""The evaluate stages on files: read the cohort's tables, score, write tables and figures.

:func:`evaluate_cohort` (``pastflow evaluate``) scores the test samples and writes (each
atomically):

- ``metrics.tsv``: one row per test sample, method and gene selection: ``sample``,
  ``method``, ``mean_pearson_50`` (mean r over the selection's 50 genes), then ``n_genes``,
  ``mean_pearson_markers``, ``n_cells``, ``n_train_cells``, ``ci_low``, ``ci_high`` (95%
  bootstrap interval of ``mean_pearson_50`` over the sample's cells), ``genes`` (the
  selection: ``train_top``, the 50 most variable over the training cells, the headline; or
  ``hest_test_top``, the 50 most variable on the test sample, the HEST convention),
  ``mean_offset`` (mean over the selection's genes of the predicted minus the measured mean
  log1p level: 0 when prediction and measurement share a scale);
- ``paired.tsv``: ``sample``, ``method`` (pastflow_head, pastflow_ridge), ``baseline``
  (random_encoder, mean_baseline, morphology_ridge), ``diff`` (method minus baseline, mean r
  over the ``train_top`` genes), ``ci_low``, ``ci_high`` (paired bootstrap);
- ``per_gene.tsv``: ``sample``, ``method``, ``gene``, ``pearson_r``, ``variance_rank``,
  ``top`` (rank on, and among the top genes of, the test sample: ``hest_test_top``),
  ``marker``, ``train_rank``, ``train_top`` (the same over the training cells:
  ``train_top``), ``ci_low``, ``ci_high`` (95% bootstrap interval of the gene's r),
  ``level_offset`` (the gene's mean predicted minus mean measured log1p level);
- ``figures/{sample}/per_gene.png``, ``per_gene_intervals.png`` and ``maps.png`` per test
  sample (the first ``evaluate.figure_samples``).

Embedding tables written before the morphology features (no ``obsm["X_morphology"]``) are
refused with an error naming the file: the embed stage must run again (a comparison without
the morphology baseline would silently lose the baseline that is hardest to beat).

:func:`evaluate_lopo` (``pastflow evaluate-lopo``) writes ``lopo.tsv``: leave-one-patient-out
on the training samples (:func:`~pastflow.predict.evaluate.evaluate_leave_one_patient_out`),
which needs no test sample.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.models.data import read_qc_table
from pastflow.predict.evaluate import (METHODS, PROBES, MeasuredSample, bootstrap_intervals,
                                       evaluate_leave_one_patient_out, evaluate_sample,
                                       join_measured, selection_genes, summarise)
from pastflow.predict.sample import read_embedding
from pastflow.predict.settings import EvaluateSettings
from pastflow.tables import read_h5ad

log = logging.getLogger(__name__)

MAP_METHODS = ("pastflow_head", "pastflow_ridge", "random_encoder")


@dataclass(frozen=True)
class EvaluationFiles:
    """Where :func:`evaluate_cohort` writes."""

    metrics: Path
    per_gene: Path
    figures: Path
    paired: Path


def read_measured(embedding_path: str | Path, table_path: str | Path) -> MeasuredSample:
    """A sample's embedding table joined to its QC table (sample and patient from the QC
    table's ``uns["pastflow"]``)."""
    embedding = read_embedding(embedding_path)
    missing = [key for key in PROBES.values() if key not in embedding.obsm]
    if missing:
        raise InputError(embedding_path, f"has no obsm {', '.join(missing)}: written by an "
                                         "older embed stage; run `pastflow embed` again")
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
    table = read_h5ad(path, "prediction table", obs=("cell_id",))
    return pd.DataFrame(table.X, index=table.obs["cell_id"].astype(str).to_numpy(),
                        columns=list(table.var_names))


def evaluate_cohort(tests: Sequence[tuple[str, str, str]], train: Sequence[tuple[str, str]],
                    out: EvaluationFiles, settings: EvaluateSettings, *,
                    progress: bool = True) -> pd.DataFrame:
    """Evaluate every test sample and write ``out``; returns the metrics table.

    Args:
        tests: per test sample ``(embedding table, QC table, prediction table)``.
        train: per training sample ``(embedding table, QC table)``.
        settings: config section ``evaluate``. Figures are drawn for the first
            ``figure_samples`` test samples only: drawing costs ~3 s a sample, three times
            the scoring; a cohort of many small test slides is scored in full and
            illustrated by a few.

    Raises:
        InputError: no test or training sample; an unreadable or mismatched table.
    """
    from pastflow.progress import progress_bar

    if not tests:
        raise InputError(None, "no test sample with measured expression to evaluate")
    if not train:
        raise InputError(None, "no training sample with measured expression: the probes and "
                               "the mean baseline need one")
    start = time.perf_counter()
    training = [read_measured(e, t) for e, t in train]
    n_train = sum(len(s) for s in training)
    metrics, per_gene_frames, paired_frames = [], [], []
    markers = list(settings.markers)
    out.figures.mkdir(parents=True, exist_ok=True)
    for index, (embedding_path, table_path, prediction_path) in enumerate(
            progress_bar(tests, desc="evaluate", unit="sample", enabled=progress)):
        test = read_measured(embedding_path, table_path)
        head = read_head(prediction_path)
        try:
            per_gene, predictions, genes = evaluate_sample(test, training, head, settings)
        except ValueError as err:
            raise InputError(prediction_path, str(err)) from None
        intervals, paired, gene_intervals = bootstrap_intervals(
            test, selection_genes(per_gene), predictions, genes, settings)
        per_gene = per_gene.merge(gene_intervals, on=["method", "gene"], how="left")
        summary = summarise(per_gene).merge(intervals, on=["method", "genes"]).assign(
            sample=test.name, n_cells=len(test), n_train_cells=n_train)
        paired_frames.append(paired.assign(sample=test.name))
        metrics.append(summary)
        per_gene_frames.append(per_gene.assign(sample=test.name))
        if index < settings.figure_samples:
            _draw(test, per_gene, predictions, genes, markers, out.figures)
        for row in summary.itertuples():
            log.info("%s %-16s mean r over %d %s genes %.3f (markers %.3f)", test.name,
                     row.method, row.n_genes, row.genes, row.mean_pearson_50,
                     row.mean_pearson_markers)
    metrics_table = pd.concat(metrics, ignore_index=True)[
        ["sample", "method", "mean_pearson_50", "n_genes", "mean_pearson_markers", "n_cells",
         "n_train_cells", "ci_low", "ci_high", "genes", "mean_offset"]]
    paired_table = pd.concat(paired_frames, ignore_index=True)[
        ["sample", "method", "baseline", "diff", "ci_low", "ci_high"]]
    per_gene_table = pd.concat(per_gene_frames, ignore_index=True)[
        ["sample", "method", "gene", "pearson_r", "variance_rank", "top", "marker", "train_rank",
         "train_top", "ci_low", "ci_high", "level_offset"]]
    for frame, path in ((metrics_table, out.metrics), (per_gene_table, out.per_gene),
                        (paired_table, out.paired)):
        _write_tsv(frame, path)
    log.info("evaluated %d test samples against %d training cells in %.1f s", len(tests),
             n_train, time.perf_counter() - start)
    return metrics_table


def evaluate_lopo(train: Sequence[tuple[str, str]], model_dir: str | Path, out: str | Path,
                  settings: EvaluateSettings) -> pd.DataFrame:
    """Leave-one-patient-out on the training samples (``(embedding table, QC table)`` each),
    over the genes of the model in checkpoint directory ``model_dir``; writes ``out``
    (atomically; empty, with its columns, when the samples come from one patient) and
    returns the table.

    Raises:
        InputError: no training sample; an unreadable or mismatched table or model.
    """
    from pastflow.models.checkpoint import CONFIG_FILE, read_checkpoint_config

    if not train:
        raise InputError(None, "no training sample with measured expression: "
                               "leave-one-patient-out needs them")
    start = time.perf_counter()
    genes = read_checkpoint_config(model_dir)["config"]["model"].get("genes")
    if not genes:
        raise InputError(Path(model_dir) / CONFIG_FILE, "the model records no genes "
                                                         "(model.genes)")
    training = [read_measured(e, t) for e, t in train]
    lopo = evaluate_leave_one_patient_out(training, list(genes), settings)
    _write_tsv(lopo, out)
    log.info("leave-one-patient-out over %d training samples (%d patients) in %.1f s",
             len(training), len({s.patient for s in training}), time.perf_counter() - start)
    return lopo


def _write_tsv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _draw(test: MeasuredSample, per_gene: pd.DataFrame, predictions: dict, genes: list[str],
          markers: Sequence[str], figures: Path) -> None:
    import matplotlib.pyplot as plt

    from pastflow.predict.plots import (plot_marker_maps, plot_per_gene,
                                        plot_per_gene_intervals)
    from pastflow.thumbnail import read_thumbnail

    folder = figures / test.name
    folder.mkdir(parents=True, exist_ok=True)
    plt.close(plot_per_gene(per_gene, test.name, folder / "per_gene.png"))
    plt.close(plot_per_gene_intervals(per_gene, test.name, folder / "per_gene_intervals.png"))
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


__all__ = ["EvaluationFiles", "evaluate_cohort", "evaluate_lopo", "read_measured",
           "read_head", "METHODS"]
