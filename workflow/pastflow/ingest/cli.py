"""``pastflow ingest``: one sample in its vendor format -> ``results/ingest/{sample}.zarr``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument
from pastflow.technologies import NAMES, REGISTRY

def sheet_mpp(value: str) -> float | None:
    """``--mpp``: '' = not given (the rule always passes the sheet's cell, quoted)."""
    from pastflow.sheet import parse_mpp

    try:
        return parse_mpp(value.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="read one sample (Xenium, Visium, Visium HD, legacy ST, H&E only) into SpatialData",
        description="Read one sample in its vendor format and write one SpatialData zarr: the H&E, "
                    "a shape per cell (or spot / bin) and the count table, all in H&E level-0 pixels. "
                    "Empty strings are allowed for paths the technology does not use.")
    parser.add_argument("--sample", required=True, help="sample id")
    parser.add_argument("--patient", required=True, help="patient id")
    parser.add_argument("--technology", required=True, help=", ".join(NAMES))
    parser.add_argument("--data", default="",
                        help="; ".join(f"{t.name}: {t.data_help}" for t in REGISTRY.values()))
    parser.add_argument("--image", default="", help="the full-resolution H&E")
    parser.add_argument("--alignment", default="",
                        help="xenium: *_he_imagealignment.csv; legacy_st: the spot *_selection.tsv")
    parser.add_argument("--mpp", type=sheet_mpp, default=None, metavar="UM_PER_PX",
                        help="level-0 microns per pixel of this sample's H&E (sheet column mpp), "
                             "used when the file records none; overrides ingest.mpp of the "
                             "settings for this sample. '' = not given")
    add_settings_argument(parser, "ingest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, type=Path, help="SpatialData zarr to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pastflow.ingest.sample import ingest_sample
    from pastflow.ingest.settings import IngestSettings
    from pastflow.settings import load_section

    settings = load_section(IngestSettings, "ingest", args.settings)
    ingest_sample(args.sample, args.patient, args.technology, args.out, data=args.data,
                  image=args.image, alignment=args.alignment, settings=settings,
                  sheet_mpp=args.mpp, progress=not args.no_progress)
    # ingest_sample has logged the summary line (sample, technology, cells, genes, seconds).
