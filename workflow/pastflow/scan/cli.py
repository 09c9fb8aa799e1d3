"""``pastflow sheet --scan FOLDER --out SHEET``: a sample sheet guessed from vendor outputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pastflow.errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sheet", help="write a sample sheet from a folder of vendor outputs",
        description="Find the samples under FOLDER (Xenium bundles, Space Ranger outs/ of "
                    "Visium and Visium HD, HEST-1k roots, legacy ST count tables, H&E-only "
                    "slides), guess each one's technology and paths, check what can be checked, "
                    "and write a sample sheet with `patient` and `split` left for you to fill.")
    parser.add_argument("--scan", required=True, type=Path, metavar="FOLDER",
                        help="the folder to search (recursively)")
    parser.add_argument("--out", required=True, type=Path, metavar="SHEET",
                        help="the sample sheet to write (TSV)")
    parser.add_argument("--force", action="store_true", help="overwrite SHEET if it exists")
    parser.set_defaults(func=run_scan)


def run_scan(args: argparse.Namespace) -> None:
    from pastflow.scan.detect import scan_folder
    from pastflow.scan.write import write_sheet

    if not args.scan.is_dir():
        raise InputError(args.scan, "not a folder")
    if args.out.exists() and not args.force:
        raise InputError(args.out, "exists already (pass --force to overwrite it)")
    samples = scan_folder(args.scan)
    if not samples:
        raise InputError(args.scan, "no samples found (looked for Xenium bundles, Space Ranger "
                                    "outs/, HEST-1k st/ folders, legacy ST *_selection.tsv "
                                    "tables and slide files)")
    table = write_sheet(samples, args.out, args.scan)
    counts = table["technology"].value_counts()
    print(f"{args.out}: {len(table)} samples ("
          + ", ".join(f"{n} {name}" for name, n in counts.items()) + ")", file=sys.stderr)
    for sample in samples:
        for note in sample.notes:
            print(f"  {sample.sample}: {note}", file=sys.stderr)
    print(f"Next: fill `patient` and `split` on every row of {args.out}, and name it as "
          "`samples:` in your config (README, 'Your own data').", file=sys.stderr)
