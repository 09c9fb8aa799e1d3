"""Expression predicted from H&E by the trained reconstruction head.

The head reads the image embedding ``h`` (``obsm["X_image"]`` of the embed stage) and gives,
per cell, over the model's cohort genes:

- ``mse`` models: log1p-normalised expression directly;
- ``nb`` / ``poisson`` models: the proportions of the cell's library that each gene takes.
  They are put on the scale of the QC tables' ``X`` (``log1p(counts / library x target)``)
  as ``log1p(proportion x target_sum)``, where ``target_sum`` is the library, after
  normalisation, that the cohort genes hold in a typical cell (see :func:`cohort_library`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from pastflow.errors import InputError
from pastflow.models.model import PastModel

log = logging.getLogger(__name__)


@torch.inference_mode()
def head_output(model: PastModel, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The head's expression output ``float32 (n, G)`` for image embeddings ``(n, embed_dim)``:
    log1p values (``mse``) or proportions summing to 1 per cell (``nb``, ``poisson``)."""
    if model.reconstruction_head is None:
        raise InputError(None, "the model has no expression head (model.losses.reconstruction "
                               "was 0 in pretraining); nothing to predict from")
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != int(model.config["embed_dim"]):
        raise InputError(None, f"embeddings of shape {embeddings.shape}; the model's are "
                               f"{model.config['embed_dim']} wide")
    device = next(model.parameters()).device
    out = np.empty((len(embeddings), len(model.genes)), np.float32)
    for start in range(0, len(embeddings), batch_size):
        h = torch.from_numpy(embeddings[start:start + batch_size]).to(device)
        values = {"expression_out": model.reconstruction_head(h).float()}
        out[start:start + len(h)] = model.predicted_expression(values).cpu().numpy()
    return out


def cohort_library(expression: sp.spmatrix | np.ndarray, genes: Sequence[str],
                   cohort_genes: Sequence[str]) -> float:
    """Median over cells of ``sum_g expm1(X[:, g])`` over the cohort genes the table has: the
    normalised library those genes hold. ``expression`` is a QC table's log1p ``X``."""
    column = {g: i for i, g in enumerate(genes)}
    keep = [column[g] for g in cohort_genes if g in column]
    if not keep:
        raise InputError(None, "the table has none of the model's genes")
    matrix = sp.csr_matrix(expression)[:, keep]
    matrix.data = np.expm1(matrix.data)
    return float(np.median(np.asarray(matrix.sum(axis=1)).ravel()))


def predict_log_expression(model: PastModel, embeddings: np.ndarray,
                           target_sum: float | None = None) -> np.ndarray:
    """Predicted log1p-normalised expression ``float32 (n, G)`` over ``model.genes``.

    ``target_sum`` (count likelihoods only) scales the proportions before ``log1p``.

    Raises:
        InputError: no head; a count-likelihood model without a positive ``target_sum``.
    """
    values = head_output(model, embeddings)
    if model.likelihood == "mse":
        return values
    if target_sum is None or not target_sum > 0:
        raise InputError(None, f"a {model.likelihood} model predicts proportions; give a "
                               f"target_sum > 0 to put them on the log1p scale")
    return np.log1p(values * np.float32(target_sum))
