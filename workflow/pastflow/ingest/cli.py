"""``pastflow ingest``: one sample in its vendor format -> ``results/ingest/{sample}.zarr``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="read one sample (Xenium, Visium, Visium HD, legacy ST, H&E only) into SpatialData",
        description="Read one sample in its vendor format and write one SpatialData zarr: the H&E, "
                    "a shape per cell (or spot / bin) and the count table, all in H&E level-0 pixels. "
                    "Empty strings are allowed for paths the technology does not use.")
    parser.add_argument("--sample", required=True, help="sample id")
    parser.add_argument("--patient", required=True, help="patient id")
    parser.add_argument("--technology", required=True,
                        help="xenium, visium, visium_hd, legacy_st or he_only")
    parser.add_argument("--data", default="",
                        help="xenium: bundle folder (or a SpatialData .zarr); visium: Space Ranger outs/ "
                             "(or an AnnData .h5ad/.h5); visium_hd: outs/; legacy_st: counts .tsv(.gz)")
    parser.add_argument("--image", default="", help="the full-resolution H&E")
    parser.add_argument("--alignment", default="",
                        help="xenium: *_he_imagealignment.csv; legacy_st: the spot *_selection.tsv")
    parser.add_argument("--mpp", type=float, default=None,
                        help="microns per H&E pixel, used only when the slide records none "
                             "(JPEG/PNG H&E-only slides)")
    parser.add_argument("--max-image-px", type=int, default=None,
                        help="H&Es larger than this (px a side) are stored downsampled in the zarr "
                             "(default 8192; the original slide is what patches read)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, type=Path, help="SpatialData zarr to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pastflow.ingest.he_image import MAX_IMAGE_SIDE
    from pastflow.ingest.sample import ingest_sample

    ingest_sample(args.sample, args.patient, args.technology, args.out, data=args.data, image=args.image,
                  alignment=args.alignment, mpp=args.mpp,
                  max_image_side=args.max_image_px or MAX_IMAGE_SIDE, progress=not args.no_progress)
    # ingest_sample has logged the summary line (sample, technology, cells, genes, seconds).
