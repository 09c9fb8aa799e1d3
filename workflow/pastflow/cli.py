"""``pastflow <stage>``: one sub-command per pipeline stage.

Each stage module ``pastflow.<stage>.cli`` defines ``add_parser(subparsers)``, which adds
its sub-command and sets ``func`` (called with the parsed args). Those modules import
their heavy dependencies inside ``func`` so that ``pastflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pastflow.errors import InputError

# Order = pipeline order; later issues add their stages here.
STAGE_MODULES = [
    "pastflow.simulate.cli",
    "pastflow.ingest.cli",
    "pastflow.qc.cli",
    "pastflow.patches.cli",
    "pastflow.models.cli",
    "pastflow.embed.cli",
    "pastflow.predict.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pastflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGE_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
