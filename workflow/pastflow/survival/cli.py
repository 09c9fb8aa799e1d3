"""Cohort-level survival, three commands (``results/survival``, see
:mod:`pastflow.survival.cohort`)::

    pastflow survival-features --sheet config/samples.tsv --clinical clinical.tsv \\
        --embeddings results/embed/*.h5ad [--predictions results/predict/*.h5ad] \\
        [--hscores results/stain/*/hscores.tsv] [--gene-sets sets.gmt] \\
        --out-dir results/survival [--settings FILE]
    pastflow survival --features results/survival/features.tsv \\
        --outcomes results/survival/outcomes.tsv --cells results/survival/cells.npz \\
        [--truth truth_hazard.tsv] --out-dir results/survival [--settings FILE]
    pastflow survival-figures --cindex results/survival/cindex.tsv \\
        --models results/survival/models.tsv --risk results/survival/risk.tsv \\
        --coefficients results/survival/coefficients.tsv --td-auc results/survival/td_auc.tsv \\
        --out-dir results/survival

Settings (folds, penalizers, clusters, MIL, ...) come from config section ``survival``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    add_features_parser(subparsers)
    add_models_parser(subparsers)
    add_figures_parser(subparsers)


def add_features_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "survival-features", help="patient features of every modality for the survival models",
        description="Clinical covariates, pooled image embeddings and their k-means cluster "
                    "composition, pathway scores of predicted expression and virtual H-scores, "
                    "one row per patient (a patient's slides pooled) -> features.tsv, "
                    "outcomes.tsv, and cells.npz (cell embeddings for attention-MIL).")
    p.add_argument("--sheet", required=True, type=Path,
                   help="the sample sheet (config/samples.tsv): the patient of every slide")
    p.add_argument("--clinical", required=True, type=Path,
                   help="clinical table: patient, os_time, os_event, covariates")
    p.add_argument("--embeddings", nargs="+", required=True, type=Path,
                   help="embedding tables of every slide (results/embed/S.h5ad)")
    p.add_argument("--predictions", nargs="*", default=[], type=Path,
                   help="prediction tables of every slide (results/predict/S.h5ad): "
                        "pathway features")
    p.add_argument("--hscores", nargs="*", default=[], type=Path,
                   help="virtual-IHC H-score tables (results/stain/S/hscores.tsv), optional")
    p.add_argument("--gene-sets", type=Path, default=None,
                   help="GMT of the pathway features (default: the pretrain default GMT)")
    p.add_argument("--cores", nargs="*", default=[], metavar="SAMPLE=PATH",
                   help="core map of each tissue-microarray sample: its cores' patients "
                        "replace the sheet's patient (pastflow.cores)")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    add_settings_argument(p, "survival")
    p.set_defaults(func=run_features_command)


def add_models_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "survival", help="cross-validated Cox models of clinical, image and predicted "
                         "molecular features, and attention-MIL",
        description="Penalised Cox models per modality and combined (penalizer by inner CV) "
                    "and attention-MIL, repeated stratified k-fold by patient, c-index with a "
                    "95%% bootstrap interval -> cindex.tsv, models.tsv, risk.tsv, "
                    "coefficients.tsv, td_auc.tsv.")
    p.add_argument("--features", required=True, type=Path,
                   help="patient features (pastflow survival-features: features.tsv)")
    p.add_argument("--outcomes", required=True, type=Path,
                   help="patient outcomes (outcomes.tsv)")
    p.add_argument("--cells", required=True, type=Path,
                   help="cell embeddings per patient (cells.npz)")
    p.add_argument("--truth", type=Path, default=None,
                   help="simulated cohorts: truth_hazard.tsv, for the true_hazard row")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    add_settings_argument(p, "survival")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_models_command)


def add_figures_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "survival-figures", help="c-index, Kaplan-Meier, forest and td-AUC figures of the "
                                 "survival models",
        description="Figures from the tables of pastflow survival -> cindex.png, km.png, "
                    "forest.png, td_auc.png.")
    for flag, name in (("--cindex", "cindex.tsv"), ("--models", "models.tsv"),
                       ("--risk", "risk.tsv"), ("--coefficients", "coefficients.tsv"),
                       ("--td-auc", "td_auc.tsv")):
        p.add_argument(flag, required=True, type=Path, help=f"{name} of pastflow survival")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the figures")
    p.set_defaults(func=run_figures_command)


def run_features_command(args: argparse.Namespace) -> None:
    from pastflow.settings import load_section
    from pastflow.survival.cohort import load_cohort, write_cohort
    from pastflow.cores import CellPatients, parse_core_map_args
    from pastflow.survival.features import sample_patients
    from pastflow.survival.settings import SurvivalSettings

    settings = load_section(SurvivalSettings, "survival", args.settings)
    patients = CellPatients(sample_patients(args.sheet), parse_core_map_args(args.cores))
    data = load_cohort(args.clinical, args.embeddings, patients, settings,
                       prediction_paths=args.predictions, hscore_paths=args.hscores,
                       gene_sets_path=args.gene_sets)
    write_cohort(data, args.out_dir)


def run_models_command(args: argparse.Namespace) -> None:
    from pastflow.settings import load_section
    from pastflow.survival.cohort import read_cohort, read_true_hazard, run_survival
    from pastflow.survival.settings import SurvivalSettings

    settings = load_section(SurvivalSettings, "survival", args.settings)
    data = read_cohort(args.features, args.outcomes, args.cells)
    truth = read_true_hazard(args.truth, data.patients) if args.truth else None
    run_survival(data, args.out_dir, settings, true_hazard=truth, progress=not args.no_progress)


def run_figures_command(args: argparse.Namespace) -> None:
    from pastflow.survival.cohort import read_results
    from pastflow.survival.plots import write_figures

    write_figures(read_results(args.cindex, args.models, args.risk, args.coefficients,
                               args.td_auc), args.out_dir)
