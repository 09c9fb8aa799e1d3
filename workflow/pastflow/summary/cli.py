"""``pastflow summary``: the run's key numbers for the report's front page."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> None:
    from pastflow.summary.gather import summarise_run, write_summary

    summary = summarise_run(args.technologies, args.stores, metrics=args.metrics,
                            cindex=args.cindex, agreement=args.agreement)
    write_summary(summary, args.json, args.tsv)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("summary", help="gather the run's key numbers (report front page)")
    p.add_argument("--technologies", nargs="+", required=True, help="one per sample")
    p.add_argument("--stores", nargs="+", required=True, help="every sample's patch store")
    p.add_argument("--metrics", help="results/predict/metrics.tsv")
    p.add_argument("--cindex", help="results/survival/cindex.tsv")
    p.add_argument("--agreement", help="results/stain/hscore_agreement.tsv")
    p.add_argument("--json", required=True, help="output: summary JSON")
    p.add_argument("--tsv", required=True, help="output: summary table")
    p.set_defaults(func=_run)
