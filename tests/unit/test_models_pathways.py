"""pastflow.models.pathways: GMT parsing, mean-z and AUCell scores, the default gene sets."""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pastflow.errors import InputError
from pastflow.models.pathways import GeneSet, default_gmt_path, read_gmt, score_pathways

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HALLMARK = DATA / "genesets" / "h.all.v2022.1.Hs.symbols.gmt"


def test_read_gmt_parses_sets_and_names_bad_lines(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("A\tsource a\tG1\tG2\tG1\n\nB\thttp://x\tG3\r\n")
    assert read_gmt(path) == [GeneSet("A", "source a", ("G1", "G2")),
                              GeneSet("B", "http://x", ("G3",))]
    path.write_text("A\tsource\tG1\nA\tagain\tG2\n")
    with pytest.raises(InputError, match=r"sets\.gmt: line 2: gene set 'A' occurs twice"):
        read_gmt(path)
    path.write_text("A\tsource\tG1\nB\tno genes\n")
    with pytest.raises(InputError, match=r"sets\.gmt: line 2: expected"):
        read_gmt(path)
    path.write_text("\n")
    with pytest.raises(InputError, match="no gene sets"):
        read_gmt(path)
    with pytest.raises(InputError, match="absent.gmt: gene-set file not found"):
        read_gmt(tmp_path / "absent.gmt")


def test_mean_z_scores_by_hand_with_coverage_and_dropping():
    # 4 cells x 4 genes; gene "C" is constant (z = 0, not 0/0).
    x = np.array([[0.0, 1.0, 2.0, 5.0],
                  [2.0, 1.0, 2.0, 1.0],
                  [4.0, 3.0, 2.0, 1.0],
                  [6.0, 3.0, 2.0, 1.0]])
    genes = ["A", "B", "C", "D"]
    sets = [GeneSet("AB", "", ("A", "B", "ZZZ")), GeneSet("C_only", "", ("C", "Q1", "Q2")),
            GeneSet("ACD", "", ("A", "C", "D"))]
    result = score_pathways(x, genes, sets, min_genes=2)
    z_a = (x[:, 0] - 3.0) / math.sqrt(5.0)   # mean 3, population variance 5
    z_b = (x[:, 1] - 2.0) / 1.0               # mean 2, variance 1
    z_d = (x[:, 3] - 2.0) / math.sqrt(3.0)    # mean 2, variance 3
    assert result.names == ["AB", "ACD"]
    np.testing.assert_allclose(result.scores[:, 0], (z_a + z_b) / 2, rtol=1e-6)
    np.testing.assert_allclose(result.scores[:, 1], (z_a + 0 + z_d) / 3, rtol=1e-6)
    coverage = result.coverage
    assert coverage.loc["AB", ["n_genes", "n_present"]].tolist() == [3, 2]
    assert coverage.loc["C_only", "fraction"] == pytest.approx(1 / 3)
    assert coverage["kept"].tolist() == [True, False, True]
    sparse = score_pathways(sp.csr_matrix(x), genes, sets, min_genes=2)
    np.testing.assert_allclose(sparse.scores, result.scores)


def aucell_reference(values: np.ndarray, members: list[int], top: int) -> float:
    """AUCell's R code for one cell, literally: x = ranks (1-based) of the set's genes,
    ``x <- sort(x[x < aucMaxRank]); y <- seq_along(x); sum(diff(c(x, aucMaxRank)) * y) / maxAUC``
    with ``maxAUC = aucMaxRank * length(geneSet)``."""
    order = np.argsort(-values, kind="stable")
    rank = np.empty(len(values), int)
    rank[order] = np.arange(1, len(values) + 1)
    x = np.sort(rank[members][rank[members] < top])
    y = np.arange(1, len(x) + 1)
    return float(np.sum(np.diff(np.append(x, top)) * y) / (top * len(members)))


def test_aucell_scores_by_hand_and_against_the_reference_formula():
    genes = [f"g{i}" for i in range(8)]
    cell = np.array([[9.0, 0.0, 1.0, 2.0, 3.0, 0.5, 4.0, 0.0]])
    # max_rank 0.25 of 8 genes: K = 2 ranks. g0 has rank 1 -> area K - 1 = 1; g5 ranks 6.
    result = score_pathways(cell, genes, [GeneSet("S", "", ("g0", "g5"))], method="aucell",
                            min_genes=1, max_rank=0.25)
    assert result.scores[0, 0] == pytest.approx(1 / (2 * 2))
    rng = np.random.default_rng(0)
    x = rng.gamma(0.6, 1.0, (50, 40)) * (rng.random((50, 40)) < 0.6)
    sets = [GeneSet(f"S{j}", "", tuple(f"g{i}" for i in rng.choice(40, 6, replace=False)))
            for j in range(5)]
    genes = [f"g{i}" for i in range(40)]
    result = score_pathways(sp.csr_matrix(x), genes, sets, method="aucell", min_genes=1,
                            max_rank=0.2, chunk=7)
    top = math.ceil(0.2 * 40)
    for j, s in enumerate(sets):
        members = [int(g[1:]) for g in s.genes]
        expected = [aucell_reference(x[c], members, top) for c in range(50)]
        np.testing.assert_allclose(result.scores[:, j], expected, rtol=1e-6)
    assert result.scores.min() >= 0 and result.scores.max() < 1


def test_default_gene_sets_are_small_cited_and_unique():
    sets = read_gmt(default_gmt_path())
    assert 12 <= len(sets) <= 15
    for s in sets:
        assert 5 <= len(s.genes) <= 20, s.name
        # Each cites its source: a publication year, or says it is pastflow's own curation.
        assert re.search(r"\b(19|20)\d\d\b|pastflow curation", s.description), s.name
        assert all(re.fullmatch(r"[A-Z0-9-]+", g) for g in s.genes), s.name
    readme = (default_gmt_path().parent / "README.md").read_text()
    assert all(s.name in readme for s in sets)


@pytest.mark.realdata
def test_default_hallmark_subsets_are_subsets_of_the_cited_hallmark_set():
    if not HALLMARK.is_file():
        pytest.skip("../shared/data/genesets is absent")
    hallmark = {s.name: set(s.genes) for s in read_gmt(HALLMARK)}
    checked = 0
    for s in read_gmt(default_gmt_path()):
        cited = re.search(r"(HALLMARK_[A-Z0-9_]+)", s.description)
        if cited:
            assert set(s.genes) <= hallmark[cited.group(1)], (s.name, set(s.genes) - hallmark[cited.group(1)])
            checked += 1
    assert checked == 5


@pytest.mark.realdata
def test_proliferation_sets_agree_on_real_her2_spots():
    """HER2+ breast cancer (her2st C2, legacy ST): two disjoint proliferation gene sets
    (G2M and E2F/S phase) score the same spots high, and HER2 amplicon genes are present."""
    counts_path = DATA / "her2st" / "C2" / "C2.tsv.gz"
    if not counts_path.is_file():
        pytest.skip("../shared/data/her2st is absent")
    with gzip.open(counts_path, "rt") as handle:
        counts = pd.read_csv(handle, sep="\t", index_col=0)
    library = counts.sum(axis=1).to_numpy()[:, None]
    log_expression = np.log1p(counts.to_numpy() / library * np.median(library))
    sets = read_gmt(default_gmt_path())
    result = score_pathways(log_expression, counts.columns, sets, min_genes=3)
    assert "HER2_AMPLICON" in result.names
    assert result.coverage.loc["HER2_AMPLICON", "n_present"] >= 8
    g2m = result.scores[:, result.names.index("PROLIFERATION_G2M")]
    e2f = result.scores[:, result.names.index("PROLIFERATION_E2F_S_PHASE")]
    assert np.corrcoef(g2m, e2f)[0, 1] > 0.3
