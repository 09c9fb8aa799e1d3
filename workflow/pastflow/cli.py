"""``pastflow <stage>``: one sub-command per pipeline stage.

Each stage module ``pastflow.<stage>.cli`` defines ``add_parser(subparsers)``, which adds
its sub-command and sets ``func`` (called with the parsed args). Those modules import
their heavy dependencies inside ``func``, and ``pastflow <stage>`` imports only its own
stage module: a workflow of many small jobs pays the start-up of one stage per job, not
of all of them (scanpy and spatialdata alone take ~4 s to import on 2 cores).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
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
    "sheet": "pastflow.scan.cli",  # not a workflow stage: a sheet from a folder of vendor outputs
    "timings": "pastflow.timings.cli",  # not a workflow stage: a run's time per stage
    "folds": "pastflow.folds.cli",  # not a workflow stage: the workflow once per fold
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
    except KeyboardInterrupt:
        # Outputs are written under temporary names (pastflow.atomic), removed on the way out.
        print(f"pastflow {args.stage}: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as err:
        # A full, read-only or forbidden disk is the user's to fix too; anything else is a
        # bug and keeps its traceback.
        message = disk_error_message(err, args)
        if message is None:
            raise
        print(f"pastflow {args.stage}: error: {message}", file=sys.stderr)
        return 1
    return 0


# errno -> what to do about it; h5py and threads wrap these, so the chain is searched.
_DISK_ERRORS = {
    errno.ENOSPC: "free space on that disk, or write the results elsewhere "
                  "(snakemake --directory)",
    errno.EDQUOT: "free space within your quota, or write the results elsewhere "
                  "(snakemake --directory)",
    errno.EROFS: "the file system is read-only: run from a writable working directory "
                 "(snakemake --directory)",
    errno.EACCES: "check the permissions of that file or folder",
    errno.EPERM: "check the permissions of that file or folder",
}
_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_NAME = re.compile(r"(?:file)?name = '([^']*)'")


def disk_error_message(err: BaseException, args: argparse.Namespace | None = None) -> str | None:
    """``<path>: <problem>; <what to do>`` when ``err`` (or an error it was raised from) is
    an OSError of a full, read-only or forbidden disk; else None. The path is the one the OS
    named, else the job's output (``--out``, ``--json``, ``--out-dir``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            code, path = err.errno, err.filename
            # h5py (HDF5) gives the errno and the file in its message only.
            if code is None and (found := _H5_ERRNO.search(str(err))):
                code = int(found.group(1))
            if path is None and (found := _H5_NAME.search(str(err))):
                path = found.group(1)
            if code in _DISK_ERRORS:
                if path is None and args is not None:
                    path = next((getattr(args, a) for a in ("out", "json", "out_dir")
                                 if getattr(args, a, None)), None)
                return (f"{path if path is not None else '(unknown file)'}: "
                        f"{os.strerror(code)} ({errno.errorcode[code]}); {_DISK_ERRORS[code]}")
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
