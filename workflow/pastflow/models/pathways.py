"""Gene sets (GMT files) and per-cell pathway scores (STAMP's denoised targets).

Two scorings of a cell's log-normalised expression:

- ``mean_z``: each gene z-scored across the sample's cells, then the mean z of the set's
  member genes present in the data;
- ``aucell``: AUCell's area under the recovery curve (Aibar et al., Nat Methods 2017): genes
  ranked within each cell, most expressed first; AUC of the set's members among the top
  ``K = ceil(max_rank * n_genes)`` ranks, divided by its maximum ``K * |set|``; in [0, 1).

Sets with fewer than ``min_genes`` members present are dropped; the coverage of every set is
recorded in :attr:`PathwayScores.coverage`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pastflow.errors import InputError

log = logging.getLogger(__name__)

METHODS = ("mean_z", "aucell")


def default_gmt_path() -> Path:
    """``resources/pathways/pastflow_default.gmt`` of this checkout (breast / immune sets)."""
    return Path(__file__).resolve().parents[3] / "resources" / "pathways" / "pastflow_default.gmt"


@dataclass(frozen=True)
class GeneSet:
    """One GMT line: a name, a free-text description (source), and member gene symbols."""

    name: str
    description: str
    genes: tuple[str, ...]


def read_gmt(path: str | Path) -> list[GeneSet]:
    """Parse a GMT file: one set per line, ``name <tab> description <tab> gene <tab> gene ...``.

    Blank lines are skipped; duplicate genes within a set are kept once (first occurrence).

    Raises:
        InputError: missing file, a line with no gene, a duplicated set name, or no set at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "gene-set file not found")
    sets, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
            if not any(fields):
                continue
            genes = tuple(dict.fromkeys(g for g in fields[2:] if g))
            if len(fields) < 3 or not fields[0] or not genes:
                raise InputError(path, f"line {number}: expected 'name<TAB>description<TAB>genes...' "
                                       f"with at least one gene")
            if fields[0] in seen:
                raise InputError(path, f"line {number}: gene set {fields[0]!r} occurs twice")
            seen.add(fields[0])
            sets.append(GeneSet(fields[0], fields[1], genes))
    if not sets:
        raise InputError(path, "no gene sets")
    return sets


@dataclass
class PathwayScores:
    """Scores of the kept sets: ``scores`` ``float32 (n_cells, n_kept)`` in the order of
    ``names``; ``coverage``: one row per input set (index = name) with ``n_genes``,
    ``n_present``, ``fraction`` and ``kept``."""

    scores: np.ndarray
    names: list[str]
    coverage: pd.DataFrame
    method: str


def score_pathways(expression, genes: Sequence[str], gene_sets: Sequence[GeneSet], *,
                   method: str = "mean_z", min_genes: int = 3, max_rank: float = 0.05,
                   chunk: int = 4096) -> PathwayScores:
    """Score every cell for every gene set with enough member genes present.

    Args:
        expression: ``(n_cells, n_genes)`` log-normalised expression, dense or scipy sparse.
        genes: the ``n_genes`` symbols of the columns.
        gene_sets: from :func:`read_gmt`.
        method: ``"mean_z"`` or ``"aucell"``.
        min_genes: drop sets with fewer member genes present.
        max_rank: AUCell's top fraction of each cell's ranking (AUCell's default is 5%).
        chunk: cells ranked at a time by AUCell (memory: ``chunk x n_genes`` ranks).
    """
    if method not in METHODS:
        raise ValueError(f"pathway scoring method must be one of {METHODS}, got {method!r}")
    genes = [str(g) for g in genes]
    if expression.shape[1] != len(genes):
        raise ValueError(f"expression has {expression.shape[1]} columns but {len(genes)} genes")
    column = {g: i for i, g in enumerate(genes)}
    members = [[column[g] for g in s.genes if g in column] for s in gene_sets]
    coverage = pd.DataFrame({
        "n_genes": [len(s.genes) for s in gene_sets],
        "n_present": [len(m) for m in members],
    }, index=pd.Index([s.name for s in gene_sets], name="pathway"))
    coverage["fraction"] = coverage["n_present"] / coverage["n_genes"]
    coverage["kept"] = coverage["n_present"] >= min_genes
    kept = [i for i, ok in enumerate(coverage["kept"]) if ok]
    if len(kept) < len(gene_sets):
        log.info("%d of %d gene sets have fewer than %d genes present and are dropped",
                 len(gene_sets) - len(kept), len(gene_sets), min_genes)
    kept_members = [members[i] for i in kept]
    n_cells = expression.shape[0]
    if not kept:
        scores = np.zeros((n_cells, 0), np.float32)
    elif method == "mean_z":
        scores = _mean_z(expression, kept_members)
    else:
        scores = _aucell(expression, kept_members, max_rank, chunk)
    return PathwayScores(scores, [gene_sets[i].name for i in kept], coverage, method)


def _dense_columns(expression, columns: np.ndarray) -> np.ndarray:
    part = expression[:, columns]
    part = part.toarray() if sp.issparse(part) else np.asarray(part)
    return part.astype(np.float64)


def _mean_z(expression, members: list[list[int]]) -> np.ndarray:
    used = np.unique(np.concatenate([np.asarray(m, np.int64) for m in members]))
    values = _dense_columns(expression, used)
    std = values.std(axis=0)
    # A gene constant across the sample's cells carries no signal: z = 0, not 0/0.
    z = np.divide(values - values.mean(axis=0), std, out=np.zeros_like(values), where=std > 0)
    position = {g: i for i, g in enumerate(used)}
    scores = np.stack([z[:, [position[g] for g in m]].mean(axis=1) for m in members], axis=1)
    return scores.astype(np.float32)


def _aucell(expression, members: list[list[int]], max_rank: float, chunk: int) -> np.ndarray:
    n_cells, n_genes = expression.shape
    top = max(1, math.ceil(max_rank * n_genes))
    scores = np.empty((n_cells, len(members)), np.float32)
    for start in range(0, n_cells, chunk):
        values = expression[start:start + chunk]
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        # 1-based rank of every gene in every cell, most expressed first; ties keep gene
        # order (AUCell breaks them at random) so that scores are reproducible.
        order = np.argsort(-values, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(1, n_genes + 1)[None, :], axis=1)
        area = np.where(rank < top, top - rank, 0)
        for j, m in enumerate(members):
            scores[start:start + len(values), j] = area[:, m].sum(axis=1) / (top * len(m))
    return scores
