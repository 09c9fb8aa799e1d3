"""``pastflow <stage>``: one sub-command per pipeline stage.

Each stage module ``pastflow.<stage>.cli`` defines ``add_parser(subparsers)``, which adds
its sub-command and sets ``func`` (called with the parsed args). Those modules import
their heavy dependencies inside ``func``, and ``pastflow <stage>`` imports only its own
stage module: a workflow of many small jobs pays the start-up of one stage per job, not
of all of them (scanpy and spatialdata alone take ~4 s to import on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pastflow.errors import InputError

# Sub-command -> the module that defines it, in pipeline order; later issues add theirs.
STAGE_MODULES = {
    "simulate": "pastflow.simulate.cli",
    "ingest": "pastflow.ingest.cli",
    "qc": "pastflow.qc.cli",
    "patches": "pastflow.patches.cli",
    "pretrain": "pastflow.pretrain.cli",
    "embed": "pastflow.embed.cli",
    "predict": "pastflow.predict.cli",
    "evaluate": "pastflow.predict.cli",
    "evaluate-lopo": "pastflow.predict.cli",
    "stain-calibrate": "pastflow.stain.cli",
    "stain": "pastflow.stain.cli",
    "stain-images": "pastflow.stain.cli",
    "stain-agreement": "pastflow.stain.cli",
    "summary": "pastflow.summary.cli",
    "survival-features": "pastflow.survival.cli",
    "survival": "pastflow.survival.cli",
    "survival-figures": "pastflow.survival.cli",
    "cohort": "pastflow.cohort.cli",  # not a workflow stage: builds a sheet (HEST-1k)
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``pastflow`` parser; with ``argv`` naming a stage, only that stage's module is
    imported (``--help`` and unknown stages import them all, to list every stage)."""
    parser = argparse.ArgumentParser(prog="pastflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    stage = next((a for a in (argv or []) if not a.startswith("-")), None)
    modules = [STAGE_MODULES[stage]] if stage in STAGE_MODULES else STAGE_MODULES.values()
    for name in dict.fromkeys(modules):  # unique, in order
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        args.func(args)
    except InputError as err:
        # Bad input is the user's to fix: a clear line, no traceback.
        print(f"pastflow {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
