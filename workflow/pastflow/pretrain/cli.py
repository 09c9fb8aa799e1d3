"""``pastflow pretrain``: PAST/STAMP pretraining on a cohort of patch stores + QC tables.

    pastflow pretrain --settings config.yaml --stores a.h5 b.h5 --tables a.h5ad b.h5ad --out DIR
        [--val-stores c.h5 --val-tables c.h5ad]

Several processes (GPUs): ``python -m pastflow.launch --nproc-per-node=N pretrain ...``
(torchrun, keeping the exit status below).
Exit status 0 when done; :data:`pastflow.models.train.EXIT_PREEMPTED` (75) when stopped by
SIGTERM/SIGUSR1/SIGURG after saving a checkpoint (run the same command again to resume); 2
on bad input (a job given GPUs that finds no CUDA included).
"""

from __future__ import annotations

import sys

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the image/expression/pathway model "
                                               "(PAST/STAMP) on a cohort")
    add_settings_argument(p, "pretrain")
    p.add_argument("--stores", nargs="+", required=True, help="patch stores (.h5), one per sample")
    p.add_argument("--tables", nargs="+", required=True,
                   help="QC tables (.h5ad), one per sample, in the order of --stores")
    p.add_argument("--val-stores", nargs="*", default=[],
                   help="patch stores of the validation samples (never trained on): the "
                        "validation loss, the best checkpoint, early stopping")
    p.add_argument("--val-tables", nargs="*", default=[],
                   help="their QC tables, in the order of --val-stores")
    p.add_argument("--out", required=True, help="output directory (checkpoints/, model/, "
                                                "metrics.tsv, training_curves.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> None:
    from pastflow.errors import InputError
    from pastflow.launch import mark_preempted
    from pastflow.models.train import EXIT_PREEMPTED, pretrain
    from pastflow.pretrain.settings import PretrainSettings
    from pastflow.settings import load_section

    if len(args.stores) != len(args.tables):
        raise InputError(None, f"{len(args.stores)} --stores but {len(args.tables)} --tables; "
                               "give one QC table per patch store, in the same order")
    if len(args.val_stores) != len(args.val_tables):
        raise InputError(None, f"{len(args.val_stores)} --val-stores but {len(args.val_tables)} "
                               "--val-tables; give one QC table per patch store, in the same order")
    settings = load_section(PretrainSettings, "pretrain", args.settings)
    result = pretrain(settings.to_dict(), list(zip(args.stores, args.tables)), args.out,
                      validation=list(zip(args.val_stores, args.val_tables)),
                      progress=not args.no_progress)
    if result.preempted:
        mark_preempted()  # for pastflow.launch: torchrun hides this exit status
        sys.exit(EXIT_PREEMPTED)
