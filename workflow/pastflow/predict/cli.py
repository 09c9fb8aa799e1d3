"""``pastflow predict`` (one sample), ``pastflow evaluate`` (the test samples of a cohort) and
``pastflow evaluate-lopo`` (leave-one-patient-out on the training samples).

    pastflow predict --model results/pretrain/model --embedding results/embed/S.h5ad \\
        [--table results/qc/S.h5ad] --out results/predict/S.h5ad [--settings FILE]
    pastflow evaluate --test-embeddings ... --test-tables ... --predictions ... \\
        --train-embeddings ... --train-tables ... --metrics M.tsv --per-gene G.tsv \\
        --paired P.tsv --figures DIR [--settings FILE]
    pastflow evaluate-lopo --model results/pretrain/model --train-embeddings ... \\
        --train-tables ... --out L.tsv [--settings FILE]

Everything but paths comes from the settings file: section ``predict``
(:class:`~pastflow.predict.settings.PredictSettings`) for ``predict``, section ``evaluate``
(:class:`~pastflow.predict.settings.EvaluateSettings`: genes scored, markers, PCA width,
seed, figures) for both evaluations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a sample's expression from its H&E with the trained head",
        description="Predicted log1p-normalised expression of every embedded cell of a sample "
                    "over the model's genes (the reconstruction head on the image embedding). "
                    "The embeddings must come from a patch store at the model's resolution.")
    p.add_argument("--model", required=True, type=Path,
                   help="checkpoint directory (results/pretrain/model)")
    p.add_argument("--embedding", required=True, type=Path,
                   help="the sample's embedding table (results/embed/S.h5ad)")
    p.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table: sets the library scale of count-likelihood "
                        "models (nb, poisson) unless predict.target_sum does; omit for "
                        "H&E-only samples")
    p.add_argument("--out", required=True, type=Path, help="prediction table to write (.h5ad)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="the sample's split in the sheet: a test sample the model was trained "
                        "on is refused")
    add_settings_argument(p, "predict")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "evaluate", help="score expression prediction on the test samples against baselines",
        description="Per-gene Pearson r on every test sample of the trained head, the "
                    "HEST-Benchmark ridge probe on trained and on random-weight embeddings and "
                    "on hand-crafted morphology features, and the mean-expression baseline, "
                    "over the genes most variable on the training cells and (HEST convention) "
                    "on the test sample (leave-one-patient-out on the training set is "
                    "`pastflow evaluate-lopo`).")
    e.add_argument("--test-embeddings", nargs="+", required=True, type=Path)
    e.add_argument("--test-tables", nargs="+", required=True, type=Path,
                   help="QC tables of the test samples, in the order of --test-embeddings")
    e.add_argument("--predictions", nargs="+", required=True, type=Path,
                   help="prediction tables of the test samples, same order")
    _add_training(e)
    e.add_argument("--metrics", required=True, type=Path, help="metrics table to write (.tsv)")
    e.add_argument("--per-gene", required=True, type=Path, help="per-gene table to write (.tsv)")
    e.add_argument("--paired", required=True, type=Path,
                   help="paired differences (pastflow minus baselines) to write (.tsv)")
    e.add_argument("--figures", required=True, type=Path,
                   help="folder for FIGURES/{sample}/per_gene.png, per_gene_intervals.png "
                        "and maps.png")
    add_settings_argument(e, "evaluate")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_evaluate)

    lopo = subparsers.add_parser(
        "evaluate-lopo", help="leave-one-patient-out on the training samples",
        description="The HEST ridge probe on trained and on random-weight embeddings and the "
                    "mean-expression baseline, each training patient held out in turn, over "
                    "the model's genes (empty table for a single patient).")
    lopo.add_argument("--model", required=True, type=Path,
                      help="checkpoint directory (results/pretrain/model): its genes")
    _add_training(lopo)
    lopo.add_argument("--out", required=True, type=Path,
                      help="leave-one-patient-out table to write (.tsv)")
    add_settings_argument(lopo, "evaluate")
    lopo.set_defaults(func=run_evaluate_lopo)


def _add_training(parser) -> None:
    parser.add_argument("--train-embeddings", nargs="+", required=True, type=Path)
    parser.add_argument("--train-tables", nargs="+", required=True, type=Path,
                        help="QC tables of the training samples, in the order of "
                             "--train-embeddings")


def _training(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    from pastflow.errors import InputError

    if len(args.train_embeddings) != len(args.train_tables):
        raise InputError(None, "give one --train-tables entry per --train-embeddings entry")
    return list(zip(args.train_embeddings, args.train_tables))


def run_predict(args: argparse.Namespace) -> None:
    from pastflow.predict.sample import predict_sample
    from pastflow.predict.settings import PredictSettings
    from pastflow.settings import load_section

    settings = load_section(PredictSettings, "predict", args.settings)
    predict_sample(args.model, args.embedding, args.out, settings, table_path=args.table,
                   split=args.split)


def run_evaluate(args: argparse.Namespace) -> None:
    from pastflow.errors import InputError
    from pastflow.predict.cohort import EvaluationFiles, evaluate_cohort
    from pastflow.predict.settings import EvaluateSettings
    from pastflow.settings import load_section

    settings = load_section(EvaluateSettings, "evaluate", args.settings)
    if not len(args.test_embeddings) == len(args.test_tables) == len(args.predictions):
        raise InputError(None, "give one --test-tables and one --predictions entry per "
                               "--test-embeddings entry, in the same order")
    evaluate_cohort(list(zip(args.test_embeddings, args.test_tables, args.predictions)),
                    _training(args), EvaluationFiles(args.metrics, args.per_gene, args.figures,
                                                     args.paired),
                    settings, progress=not args.no_progress)


def run_evaluate_lopo(args: argparse.Namespace) -> None:
    from pastflow.predict.cohort import evaluate_lopo
    from pastflow.predict.settings import EvaluateSettings
    from pastflow.settings import load_section

    settings = load_section(EvaluateSettings, "evaluate", args.settings)
    evaluate_lopo(_training(args), args.model, args.out, settings)
