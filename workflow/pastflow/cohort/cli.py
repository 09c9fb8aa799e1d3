"""``pastflow cohort hest``: a validated sample sheet for a HEST-1k cohort."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cohort", help="build a sample sheet from a public cohort's metadata (HEST-1k)",
        description="Build a validated sample sheet, with patient-level splits, from the "
                    "metadata of a public cohort.")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    hest = sources.add_parser(
        "hest", help="HEST-1k (huggingface.co/datasets/MahmoodLab/hest)",
        description="Select HEST-1k samples with a pandas query on the metadata table and write "
                    "a sample sheet (technology hest, paths relative to --root: set the config's "
                    "data_root to it) with patient-level train/val/test splits.")
    hest.add_argument("--metadata", required=True, type=Path,
                      help="the HEST metadata table (HEST_v1_1_0.csv)")
    hest.add_argument("--root", required=True, type=Path,
                      help="the HEST data folder (holds st/, wsis/, metadata/, ...)")
    hest.add_argument("--where", default=None, metavar="QUERY",
                      help="pandas query on the metadata columns, e.g. \"organ == 'Breast' and "
                           "st_technology == 'Visium'\" (default: every sample)")
    hest.add_argument("--out", required=True, type=Path, help="sample sheet to write (TSV)")
    hest.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle (0)")
    hest.add_argument("--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2),
                      metavar=("TRAIN", "VAL", "TEST"),
                      help="share of the samples per set, summing to 1 (0.6 0.2 0.2)")
    hest.add_argument("--allow-missing", action="store_true",
                      help="write the sheet even if files are not downloaded yet (they are "
                           "listed; the workflow refuses to run until they exist)")
    hest.set_defaults(func=run_hest)


def run_hest(args: argparse.Namespace) -> None:
    from pastflow.cohort.hest import build_hest_sheet

    build_hest_sheet(args.metadata, args.root, args.out, where=args.where, seed=args.seed,
                     fractions=args.fractions, allow_missing=args.allow_missing)
