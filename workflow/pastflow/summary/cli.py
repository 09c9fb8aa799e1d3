"""``pastflow summary``: the run's key numbers for the report's front page."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> None:
    from pastflow.preflight import read_notes
    from pastflow.summary.gather import summarise_run, write_summary

    summary = summarise_run(args.technologies, args.stores, metrics=args.metrics,
                            cindex=args.cindex, agreement=args.agreement, samples=args.samples,
                            outcomes=args.outcomes, notes=read_notes(args.notes),
                            paired=args.paired)
    write_summary(summary, args.json, args.tsv)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "summary", help="gather the run's key numbers (report front page)",
        description="The run's key numbers -> summary.json (front page) and summary.tsv (one "
                    "number per row). Expression metrics are given per test sample and per "
                    "technology, never averaged across technologies.")
    p.add_argument("--samples", nargs="+",
                   help="every sample of the sheet (needed with --metrics), in the order of "
                        "--technologies")
    p.add_argument("--technologies", nargs="+", required=True,
                   help="one per sample, in the order of --samples")
    p.add_argument("--stores", nargs="+", required=True, help="every sample's patch store")
    p.add_argument("--metrics", help="results/predict/metrics.tsv")
    p.add_argument("--paired", help="results/predict/paired.tsv: each test sample's "
                                    "difference to its strongest baseline")
    p.add_argument("--cindex", help="results/survival/cindex.tsv")
    p.add_argument("--outcomes",
                   help="results/survival/outcomes.tsv (patients and events behind the c-index)")
    p.add_argument("--agreement", help="results/stain/hscore_agreement.tsv")
    p.add_argument("--notes", help="results/settings/notes.json: the stages the run skipped "
                                   "and why (a JSON list of lines, written at start-up)")
    p.add_argument("--json", required=True, help="output: summary JSON")
    p.add_argument("--tsv", required=True, help="output: summary table")
    p.set_defaults(func=_run)
