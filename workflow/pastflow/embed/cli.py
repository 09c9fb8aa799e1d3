"""``pastflow embed``: one sample's image (and expression) embeddings from a trained model.

    pastflow embed --model results/pretrain/model --store S.h5 [--table S.h5ad] --out S.h5ad
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed every cell of a sample with the pretrained model",
        description="Image embeddings of every in-slide cell of a patch store (trained model "
                    "and the same architecture with random weights), and expression embeddings "
                    "of the cells of the sample's QC table when one is given.")
    p.add_argument("--model", required=True, type=Path,
                   help="checkpoint directory (results/pretrain/model)")
    p.add_argument("--store", required=True, type=Path, help="the sample's patch store (.h5)")
    p.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table (.h5ad); omit for H&E-only samples")
    p.add_argument("--out", required=True, type=Path, help="embedding table to write (.h5ad)")
    p.add_argument("--sample", default=None, help="sample id (default: the store's file name)")
    p.add_argument("--random-seed", type=int, default=0,
                   help="seed of the random-weight baseline encoder (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="cells per batch (default 256)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pastflow.embed.sample import embed_sample
    from pastflow.errors import InputError

    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}")
    embed_sample(args.model, args.store, args.out, table_path=args.table, sample=args.sample,
                 random_seed=args.random_seed, batch_size=args.batch_size, device=args.device,
                 progress=not args.no_progress)
