"""``pastflow timings [--benchmarks results/benchmarks] [--out FILE]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "timings", help="wall time and peak memory per stage, from the run's benchmark files",
        description="Sums Snakemake's benchmark files per rule: jobs, total and longest wall "
                    "time, CPU time and peak memory (MB).")
    parser.add_argument("--benchmarks", type=Path, default=Path("results/benchmarks"),
                        help="the run's benchmark folder (default: results/benchmarks)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (TSV)")
    parser.set_defaults(func=run_timings)


def run_timings(args: argparse.Namespace) -> None:
    from pastflow.atomic import atomic_path
    from pastflow.timings.table import format_timings, stage_timings

    table = stage_timings(args.benchmarks)
    print(format_timings(table))
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.2f")
