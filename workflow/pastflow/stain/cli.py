"""``pastflow stain-calibrate`` (cohort), ``pastflow stain`` (one sample) and
``pastflow stain-agreement`` (held-out cohort).

    pastflow stain-calibrate --tables results/qc/S1.h5ad ... [--panel P.yaml] --out cutoffs.tsv
    pastflow stain --prediction results/predict/S.h5ad --store results/patches/S.h5 \\
        --cutoffs cutoffs.tsv [--table results/qc/S.h5ad] [--images Ki67 CD3] --out-dir DIR
    pastflow stain-agreement --hscores DIR1/hscores.tsv ... --out hscore_agreement.tsv \\
        --details D.tsv --bland-altman BA.png --scatter S.png
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "stain-calibrate", help="calibrate virtual IHC cut-offs on training slides",
        description="Cut-offs of the 0/1+/2+/3+ bins per marker: Otsu's threshold of the "
                    "measured marker score (negative | positive), then the tertiles of the "
                    "positive cells; cut-offs in the panel file win.")
    c.add_argument("--tables", nargs="*", default=[], type=Path,
                   help="QC tables of the training slides (results/qc/S.h5ad)")
    c.add_argument("--panel", type=Path, default=None,
                   help="marker panel YAML (default resources/ihc_panel.yaml)")
    c.add_argument("--out", required=True, type=Path, help="cut-offs table to write (.tsv)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_calibrate)

    s = subparsers.add_parser(
        "stain", help="virtual IHC of one sample: H-scores and virtual stain images",
        description="Bins every cell's predicted marker level into 0/1+/2+/3+, writes H-scores "
                    "per slide and region (and from measured expression with --table), and "
                    "virtual stains as pyramidal TIFFs.")
    s.add_argument("--prediction", required=True, type=Path,
                   help="the sample's prediction table (results/predict/S.h5ad)")
    s.add_argument("--store", required=True, type=Path,
                   help="the sample's patch store (results/patches/S.h5)")
    s.add_argument("--cutoffs", required=True, type=Path, help="from pastflow stain-calibrate")
    s.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table: adds H-scores from measured expression")
    s.add_argument("--panel", type=Path, default=None,
                   help="marker panel YAML (default resources/ihc_panel.yaml)")
    s.add_argument("--images", nargs="*", default=[],
                   help="markers to render as virtual stains (default none)")
    s.add_argument("--grid-um", type=float, default=None,
                   help="region grid size in microns (default 250)")
    s.add_argument("--min-region-cells", type=int, default=None,
                   help="regions with fewer cells are not scored (default 20)")
    s.add_argument("--regions", type=Path, default=None,
                   help="annotated regions (TSV: cell_id, region) instead of the grid")
    s.add_argument("--unit-um", type=float, default=None,
                   help="cell/spot diameter in microns for the stain blobs (default from the "
                        "QC table, else 10)")
    s.add_argument("--sample", default=None, help="sample name (default: the prediction's stem)")
    s.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_stain)

    a = subparsers.add_parser(
        "stain-agreement", help="H-scores from predicted vs measured expression (test slides)",
        description="Pearson r per marker between H-scores from predicted and from measured "
                    "expression, per slide and per region, with Bland-Altman and scatter plots.")
    a.add_argument("--hscores", nargs="+", required=True, type=Path,
                   help="hscores.tsv of the test samples with measured expression")
    a.add_argument("--out", required=True, type=Path,
                   help="agreement table (marker, level, pearson_r, n)")
    a.add_argument("--details", required=True, type=Path,
                   help="summary with Bland-Altman statistics plus every pair (.tsv)")
    a.add_argument("--bland-altman", required=True, type=Path, help="figure (.png)")
    a.add_argument("--scatter", required=True, type=Path, help="figure (.png)")
    a.set_defaults(func=run_agreement)


def _panel(path: Path | None):
    from pastflow.stain.panel import DEFAULT_PANEL, read_panel

    return read_panel(path or DEFAULT_PANEL)


def run_calibrate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from pastflow.stain.calibrate import calibrate_cutoffs, write_cutoffs
    from pastflow.stain.io import read_cell_table

    panel = _panel(args.panel)
    tables = [read_cell_table(p, "QC table") for p in tqdm(args.tables, desc="reading QC tables",
                                             disable=args.no_progress)]
    write_cutoffs(calibrate_cutoffs(tables, panel, [str(p) for p in args.tables]), args.out)


def run_stain(args: argparse.Namespace) -> None:
    from pastflow.errors import InputError
    from pastflow.stain.sample import DEFAULT_GRID_UM, DEFAULT_MIN_REGION_CELLS, stain_sample

    grid_um = DEFAULT_GRID_UM if args.grid_um is None else args.grid_um
    min_cells = DEFAULT_MIN_REGION_CELLS if args.min_region_cells is None else args.min_region_cells
    if grid_um <= 0:
        raise InputError(None, f"--grid-um must be positive, got {grid_um}")
    if min_cells < 1:
        raise InputError(None, f"--min-region-cells must be >= 1, got {min_cells}")
    if args.unit_um is not None and args.unit_um <= 0:
        raise InputError(None, f"--unit-um must be positive, got {args.unit_um}")
    stain_sample(args.prediction, args.store, args.cutoffs, _panel(args.panel), args.out_dir,
                 sample=args.sample, table_path=args.table, images=args.images,
                 grid_um=grid_um, min_region_cells=min_cells, regions_path=args.regions,
                 unit_um=args.unit_um, progress=not args.no_progress)


def run_agreement(args: argparse.Namespace) -> None:
    from pastflow.stain.agreement import write_agreement

    write_agreement(args.hscores, args.out, args.details, args.bland_altman, args.scatter)
