"""One sample's expression predicted from its H&E (``results/predict/{sample}.h5ad``).

Rows are the rows of the sample's embedding table (every in-slide cell, ``obs`` copied);
columns the model's cohort genes; ``X`` ``float32`` the predicted log1p-normalised expression
(:mod:`pastflow.predict.head`), on the scale of the training samples' QC tables (log1p of
counts per ``qc.target_sum``, :mod:`pastflow.qc.scale`). ``uns["pastflow_predict"]``: the
model, its likelihood, the ``target_sum`` used (count likelihoods) and where it came from, and
``qc_target_sum``, the scale (NaN for a model trained on median-depth tables).

The embedding table must come from a patch store at the model's resolution (its
``uns["pastflow_embed"]["store_mpp"]``, :mod:`pastflow.resolution`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.models.checkpoint import load_checkpoint
from pastflow.models.data import read_qc_table
from pastflow.models.provenance import check_held_out
from pastflow.predict.head import cohort_library, predict_log_expression
from pastflow.predict.settings import PredictSettings
from pastflow.qc.scale import table_target_sum, training_target_sum
from pastflow.qc.settings import QCSettings
from pastflow.resolution import check_resolution
from pastflow.tables import read_h5ad

log = logging.getLogger(__name__)


def read_embedding(path: str | Path) -> ad.AnnData:
    """An embed-stage table; InputError naming the file when it is not one."""
    table = read_h5ad(path, "embedding table")
    for key in ("X_image", "X_image_random"):
        if key not in table.obsm:
            raise InputError(path, f'no obsm["{key}"]; was it written by pastflow embed?')
    return table


def predict_sample(model_dir: str | Path, embedding_path: str | Path, out_path: str | Path,
                   settings: PredictSettings, *, table_path: str | Path | None = None,
                   split: str | None = None) -> ad.AnnData:
    """Predict every cell's expression from its image embedding and write it (atomically).

    Count-likelihood models (nb, poisson) need the library the cohort genes hold after
    normalisation: ``settings.target_sum`` when set, else measured on the sample's QC table
    ``table_path`` (:func:`~pastflow.predict.head.cohort_library`), else 10,000.

    ``split``: the sample's split in the sheet; a ``test`` sample the model was trained on is
    refused (:func:`~pastflow.models.provenance.check_held_out`).

    Raises:
        InputError: unreadable inputs; embeddings of a patch store at another resolution
            than the model's; a model without an expression head; a test sample the model
            was trained on; a QC table normalised to another target than the training tables.
    """
    start = time.perf_counter()
    target_sum = settings.target_sum
    checkpoint = load_checkpoint(model_dir)
    model = checkpoint.model
    embedding = read_embedding(embedding_path)
    store_mpp = embedding.uns.get("pastflow_embed", {}).get("store_mpp")
    check_resolution(checkpoint.config["model"], store_mpp, source=embedding_path,
                     model_source=model_dir, what="embeddings of patches")
    if "sample" in embedding.obs and embedding.n_obs:
        check_held_out(checkpoint.training_data, str(embedding.obs["sample"].iloc[0]), split,
                       model_dir)
    scale = training_target_sum(checkpoint.training_data)
    if table_path is not None:
        check_scale(scale, table_target_sum(table_path), table_path, model_dir)
    source = "none (mse: log1p predicted directly)"
    if model.likelihood != "mse" and target_sum is None:
        if table_path is not None:
            qc = read_qc_table(table_path)
            target_sum = cohort_library(qc.X, list(qc.var_names), model.genes)
            source = f"median normalised library of the model genes in {table_path}"
        else:
            # Nothing measured to match: the QC target itself. Per-gene r barely depends on
            # it (the head's r moved by 0.002 between 50 and 10,000).
            target_sum = scale or QCSettings().target_sum
            source = f"qc.target_sum ({target_sum:g}: no QC table)"
            log.warning("%s: no QC table; %s predictions put on the scale of counts per %g",
                        embedding_path, model.likelihood, target_sum)
    elif target_sum is not None:
        source = "predict.target_sum"
    predicted = predict_log_expression(model, embedding.obsm["X_image"], target_sum)
    obs = embedding.obs.copy()
    table = ad.AnnData(predicted, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    table.uns["pastflow_predict"] = {
        "model": str(Path(model_dir).resolve()), "model_step": checkpoint.step,
        "likelihood": model.likelihood,
        "target_sum": float(target_sum) if target_sum is not None else np.nan,
        "target_sum_source": source, "embedding": str(Path(embedding_path).resolve()),
        "qc_target_sum": float(scale) if scale is not None else np.nan,
    }
    with atomic_path(out_path) as tmp:
        table.write_h5ad(tmp)
    log.info("%s: predicted %d genes for %d cells in %.1f s", Path(embedding_path).stem,
             table.n_vars, table.n_obs, time.perf_counter() - start)
    return table


def check_scale(model_scale: float | None, table_scale: float | None, table_path: str | Path,
                model_dir: str | Path) -> None:
    """Refuse a QC table whose log1p scale differs from the training tables' (a head's
    predictions would sit a constant offset away from what it measured); warn when either
    was scaled to its own median depth (a scale that moves with sequencing depth)."""
    if model_scale is not None and table_scale is not None:
        if abs(model_scale - table_scale) > 1e-6 * model_scale:
            raise InputError(table_path, f"normalised to {table_scale:g} counts per cell, but "
                                         f"the model {model_dir} was trained on tables "
                                         f"normalised to {model_scale:g}: run qc again with "
                                         f"qc.target_sum {model_scale:g}")
    else:
        log.warning("%s: the %s records no qc.target_sum (median-depth scaling, written "
                    "before pastflow fixed the scale): measured and predicted levels may "
                    "sit on different scales; rerun qc", table_path if table_scale is None
                    else model_dir, "QC table" if table_scale is None else "model")
