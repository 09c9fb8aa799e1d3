"""``pastflow embed``: one sample's image (and expression) embeddings from a trained model.

    pastflow embed --model results/pretrain/model --store S.h5 [--table S.h5ad] --out S.h5ad \\
        [--sample S] [--settings results/settings/embed.json]

Batch size, the random baseline's seed and the device come from config section ``embed``
(:class:`pastflow.embed.settings.EmbedSettings`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed every cell of a sample with the pretrained model",
        description="Image embeddings of every in-slide cell of a patch store (trained model "
                    "and the same architecture with random weights), and expression embeddings "
                    "of the cells of the sample's QC table when one is given. The store must "
                    "be at the model's resolution.")
    p.add_argument("--model", required=True, type=Path,
                   help="checkpoint directory (results/pretrain/model)")
    p.add_argument("--store", required=True, type=Path, help="the sample's patch store (.h5)")
    p.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table (.h5ad); omit for H&E-only samples")
    p.add_argument("--out", required=True, type=Path, help="embedding table to write (.h5ad)")
    p.add_argument("--sample", default=None, help="sample id (default: the store's file name)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="the sample's split in the sheet: a test sample the model was trained "
                        "on is refused")
    add_settings_argument(p, "embed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings
    from pastflow.settings import load_section

    settings = load_section(EmbedSettings, "embed", args.settings)
    embed_sample(args.model, args.store, args.out, settings, table_path=args.table,
                 sample=args.sample, split=args.split, progress=not args.no_progress)
