"""``pastflow survival``: cohort-level multimodal survival models.

    pastflow survival --clinical clinical.tsv --embeddings results/embed/*.h5ad \\
        --predictions results/predict/*.h5ad --sample-patients S1=P1 S2=P1 ... \\
        [--hscores results/stain/*/hscores.tsv] [--truth truth_hazard.tsv] \\
        --out-dir results/survival
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "survival", help="cross-validated Cox models of clinical, image and predicted "
                         "molecular features; attention-MIL; KM and forest plots",
        description="Patient-level features per modality -> penalised Cox models (penalizer "
                    "by inner CV) and attention-MIL, repeated stratified k-fold by patient, "
                    "c-index with a 95%% bootstrap interval.")
    p.add_argument("--clinical", required=True, type=Path,
                   help="clinical table: patient, os_time, os_event, covariates")
    p.add_argument("--embeddings", nargs="+", required=True, type=Path,
                   help="embedding tables of every slide (results/embed/S.h5ad)")
    p.add_argument("--predictions", nargs="*", default=[], type=Path,
                   help="prediction tables of every slide (results/predict/S.h5ad): "
                        "pathway features")
    p.add_argument("--hscores", nargs="*", default=[], type=Path,
                   help="virtual-IHC H-score tables (results/stain/S/hscores.tsv), optional")
    p.add_argument("--sample-patients", nargs="+", required=True, metavar="SAMPLE=PATIENT",
                   help="patient of every slide")
    p.add_argument("--truth", type=Path, default=None,
                   help="simulated cohorts: truth_hazard.tsv, for the true_hazard row")
    p.add_argument("--gene-sets", type=Path, default=None,
                   help="GMT of the pathway features (default: the pretrain default GMT)")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    p.add_argument("--folds", type=int, default=5, help="outer folds (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="outer repeats (default 3)")
    p.add_argument("--inner-folds", type=int, default=3,
                   help="inner folds choosing the penalizer (default 3)")
    p.add_argument("--penalizers", nargs="+", type=float, default=None,
                   help="penalizer grid (default 0.1 0.3 1 3)")
    p.add_argument("--pca", type=int, default=4,
                   help="principal components of the mean image embedding (default 4)")
    p.add_argument("--clusters", type=int, default=8,
                   help="k-means clusters of cell image embeddings (default 8)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the c-index interval (default 1000)")
    p.add_argument("--mil-epochs", type=int, default=150,
                   help="attention-MIL training steps; 0 = no image_mil model (default 150)")
    p.add_argument("--mil-cells", type=int, default=256,
                   help="cells drawn per patient for attention-MIL (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_survival_command)


def run_survival_command(args: argparse.Namespace) -> None:
    from pastflow.errors import InputError
    from pastflow.survival.cohort import (SurvivalSettings, load_cohort, read_true_hazard,
                                          run_survival)
    from pastflow.survival.cox import DEFAULT_PENALIZERS
    from pastflow.survival.features import parse_sample_patients
    from pastflow.survival.mil import MILConfig

    try:
        sample_patient = parse_sample_patients(args.sample_patients)
    except ValueError as err:
        raise InputError(None, f"--sample-patients: {err}") from None
    for name in ("folds", "repeats", "inner_folds", "pca", "clusters", "bootstrap", "mil_cells"):
        if getattr(args, name) < 1:
            raise InputError(None, f"--{name.replace('_', '-')} must be >= 1")
    if args.folds < 2 or args.inner_folds < 2:
        raise InputError(None, "--folds and --inner-folds must be >= 2")
    penalizers = tuple(args.penalizers or DEFAULT_PENALIZERS)
    if any(p <= 0 for p in penalizers):
        raise InputError(None, "--penalizers must be > 0")
    mil = (MILConfig(epochs=args.mil_epochs, max_cells=args.mil_cells, seed=args.seed)
           if args.mil_epochs > 0 else None)
    settings = SurvivalSettings(n_splits=args.folds, n_repeats=args.repeats,
                                inner_splits=args.inner_folds, penalizers=penalizers,
                                pca_components=args.pca, n_clusters=args.clusters,
                                n_boot=args.bootstrap, seed=args.seed, mil=mil)
    data = load_cohort(args.clinical, args.embeddings, sample_patient,
                       prediction_paths=args.predictions, hscore_paths=args.hscores,
                       gene_sets_path=args.gene_sets, settings=settings)
    truth = read_true_hazard(args.truth, data.patients) if args.truth else None
    run_survival(data, args.out_dir, true_hazard=truth, settings=settings,
                 progress=not args.no_progress)
