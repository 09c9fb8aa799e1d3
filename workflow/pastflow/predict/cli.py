"""``pastflow predict`` (one sample) and ``pastflow evaluate`` (the test samples of a cohort).

    pastflow predict --model results/pretrain/model --embedding results/embed/S.h5ad \\
        [--table results/qc/S.h5ad] --out results/predict/S.h5ad
    pastflow evaluate --test-embeddings ... --test-tables ... --predictions ... \\
        --train-embeddings ... --train-tables ... --metrics M.tsv --per-gene G.tsv \\
        --lopo L.tsv --figures DIR [--markers EPCAM CD3D ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a sample's expression from its H&E with the trained head",
        description="Predicted log1p-normalised expression of every embedded cell of a sample "
                    "over the model's genes (the reconstruction head on the image embedding).")
    p.add_argument("--model", required=True, type=Path,
                   help="checkpoint directory (results/pretrain/model)")
    p.add_argument("--embedding", required=True, type=Path,
                   help="the sample's embedding table (results/embed/S.h5ad)")
    p.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table: sets the library scale of count-likelihood "
                        "models (nb, poisson); omit for H&E-only samples")
    p.add_argument("--target-sum", type=float, default=None,
                   help="library scale of count-likelihood models (default: from --table, "
                        "else 10,000)")
    p.add_argument("--out", required=True, type=Path, help="prediction table to write (.h5ad)")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "evaluate", help="score expression prediction on the test samples against baselines",
        description="Per-gene Pearson r on every test sample of the trained head, the "
                    "HEST-Benchmark ridge probe on trained and on random-weight embeddings, and "
                    "the mean-expression baseline; leave-one-patient-out on the training set.")
    e.add_argument("--test-embeddings", nargs="+", required=True, type=Path)
    e.add_argument("--test-tables", nargs="+", required=True, type=Path,
                   help="QC tables of the test samples, in the order of --test-embeddings")
    e.add_argument("--predictions", nargs="+", required=True, type=Path,
                   help="prediction tables of the test samples, same order")
    e.add_argument("--train-embeddings", nargs="+", required=True, type=Path)
    e.add_argument("--train-tables", nargs="+", required=True, type=Path,
                   help="QC tables of the training samples, in the order of --train-embeddings")
    e.add_argument("--metrics", required=True, type=Path, help="metrics table to write (.tsv)")
    e.add_argument("--per-gene", required=True, type=Path, help="per-gene table to write (.tsv)")
    e.add_argument("--lopo", required=True, type=Path,
                   help="leave-one-patient-out table to write (.tsv)")
    e.add_argument("--figures", required=True, type=Path,
                   help="folder for FIGURES/{sample}/per_gene.png and maps.png")
    e.add_argument("--markers", nargs="*", default=[], help="marker genes to map and score")
    e.add_argument("--n-genes", type=int, default=50,
                   help="score = mean r over this many most variable genes (default 50)")
    e.add_argument("--pca", type=int, default=256,
                   help="PCA components of the ridge probe (default 256, HEST)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--figure-samples", type=int, default=None,
                   help="draw figures for the first N test samples only (default: all)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_evaluate)


def run_predict(args: argparse.Namespace) -> None:
    from pastflow.predict.sample import predict_sample

    predict_sample(args.model, args.embedding, args.out, table_path=args.table,
                   target_sum=args.target_sum)


def run_evaluate(args: argparse.Namespace) -> None:
    from pastflow.errors import InputError
    from pastflow.predict.cohort import EvaluationFiles, evaluate_cohort

    if not len(args.test_embeddings) == len(args.test_tables) == len(args.predictions):
        raise InputError(None, "give one --test-tables and one --predictions entry per "
                               "--test-embeddings entry, in the same order")
    if len(args.train_embeddings) != len(args.train_tables):
        raise InputError(None, "give one --train-tables entry per --train-embeddings entry")
    if args.n_genes < 1 or args.pca < 1:
        raise InputError(None, "--n-genes and --pca must be >= 1")
    evaluate_cohort(list(zip(args.test_embeddings, args.test_tables, args.predictions)),
                    list(zip(args.train_embeddings, args.train_tables)),
                    EvaluationFiles(args.metrics, args.per_gene, args.lopo, args.figures),
                    markers=args.markers, n_genes=args.n_genes, n_components=args.pca,
                    seed=args.seed, figure_samples=args.figure_samples,
                    progress=not args.no_progress)
