"""``pastflow pretrain``: PAST/STAMP pretraining on a cohort of patch stores + QC tables.

    pastflow pretrain --config cfg.yaml --stores a.h5 b.h5 --tables a.h5ad b.h5ad --out DIR

Several processes (GPUs): ``torchrun --nproc-per-node=N -m pastflow pretrain ...``.
Exit status 0 when done; :data:`pastflow.models.train.EXIT_PREEMPTED` (75) when stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (run the same command again to resume); 2 on bad
input. Also runnable alone as ``python -m pastflow.models.cli pretrain ...``.
"""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the image/expression/pathway model "
                                               "(PAST/STAMP) on a cohort")
    p.add_argument("--config", required=True,
                   help="YAML: the pretraining config, or a workflow config with a `pretrain:` "
                        "section (keys: pastflow.models.config.DEFAULTS)")
    p.add_argument("--stores", nargs="+", required=True, help="patch stores (.h5), one per sample")
    p.add_argument("--tables", nargs="+", required=True,
                   help="QC tables (.h5ad), one per sample, in the order of --stores")
    p.add_argument("--out", required=True, help="output directory (checkpoints/, model/, "
                                                "metrics.tsv, training_curves.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def read_config(path) -> dict:
    """The pretraining section of a YAML file (its ``pretrain:`` key, or the whole file)."""
    from pathlib import Path

    import yaml

    from pastflow.errors import InputError
    from pastflow.models.config import resolve_config

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({err})") from None
    if not isinstance(document, dict):
        raise InputError(path, "the config must be a mapping")
    section = document.get("pretrain", document)
    resolve_config(section, source=path)  # fail here, naming the file, on an unknown key
    return section


def run(args) -> None:
    from pastflow.errors import InputError
    from pastflow.models.train import EXIT_PREEMPTED, pretrain

    if len(args.stores) != len(args.tables):
        raise InputError(None, f"{len(args.stores)} --stores but {len(args.tables)} --tables; "
                               "give one QC table per patch store, in the same order")
    result = pretrain(read_config(args.config), list(zip(args.stores, args.tables)), args.out,
                      progress=not args.no_progress)
    if result.preempted:
        sys.exit(EXIT_PREEMPTED)


def main(argv: list[str] | None = None) -> int:
    """``python -m pastflow.models.cli pretrain ...`` (until ``pastflow pretrain`` is wired)."""
    import argparse
    import logging

    from pastflow.errors import InputError

    parser = argparse.ArgumentParser(prog="pastflow.models.cli")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_parser(parser.add_subparsers(dest="stage", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.func(args)
    except InputError as err:
        print(f"pastflow {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
