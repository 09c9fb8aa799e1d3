"""``pastflow stain-calibrate`` (cohort), ``pastflow stain`` and ``pastflow stain-images``
(one sample) and ``pastflow stain-agreement`` (held-out cohort).

    pastflow stain-calibrate --tables results/qc/S1.h5ad ... \\
        [--predictions results/predict/S1.h5ad ...] [--panel P.yaml] \\
        [--settings results/settings/stain.json] --out cutoffs.tsv
    pastflow stain --prediction results/predict/S.h5ad --store results/patches/S.h5 \\
        --cutoffs cutoffs.tsv [--table results/qc/S.h5ad] [--panel P.yaml] \\
        [--regions R.tsv] [--settings results/settings/stain.json] --out-dir DIR
    pastflow stain-images --cells DIR/cells.tsv.gz --hscores DIR/hscores.tsv \\
        --store results/patches/S.h5 [--table results/qc/S.h5ad] [--panel P.yaml] \\
        [--regions R.tsv] [--settings results/settings/stain.json] --out-dir DIR
    pastflow stain-agreement --hscores DIR1/hscores.tsv ... --out hscore_agreement.tsv \\
        --details D.tsv --bland-altman BA.png --scatter S.png \\
        [--settings results/settings/stain.json]

Everything but paths (markers to draw, region grid, minimum cells per region, blob size, the
default panel) comes from config section ``stain`` of ``--settings``
(:class:`~pastflow.stain.settings.StainSettings`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument

PANEL_HELP = "marker panel YAML (default: the settings' stain.panel)"


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "stain-calibrate", help="calibrate virtual IHC cut-offs on training slides",
        description="Cut-offs of the 0/1+/2+/3+ bins per marker, for measured and for "
                    "predicted scores: Otsu's threshold of the measured marker score "
                    "(negative | positive), then the tertiles of the positive cells; the "
                    "predicted cut-offs call as many training cells 0/1+/2+/3+ as the measured "
                    "ones; cut-offs in the panel file win.")
    c.add_argument("--tables", nargs="*", default=[], type=Path,
                   help="QC tables of the training slides (results/qc/S.h5ad)")
    c.add_argument("--predictions", nargs="*", default=None, type=Path,
                   help="the predict stage's tables of the same slides, in the same order "
                        "(results/predict/S.h5ad): the predicted cut-offs are fitted on them "
                        "(without: the measured cut-offs are used for predictions too)")
    c.add_argument("--panel", type=Path, default=None, help=PANEL_HELP)
    c.add_argument("--out", required=True, type=Path, help="cut-offs table to write (.tsv)")
    add_settings_argument(c, "stain")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_calibrate)

    s = subparsers.add_parser(
        "stain", help="virtual IHC of one sample: levels and H-scores",
        description="Bins every cell's predicted marker level into 0/1+/2+/3+ and writes "
                    "H-scores per slide and region (and from measured expression with "
                    "--table): hscores.tsv and cells.tsv.gz. The virtual stain images are "
                    "drawn from them by pastflow stain-images.")
    s.add_argument("--prediction", required=True, type=Path,
                   help="the sample's prediction table (results/predict/S.h5ad)")
    s.add_argument("--store", required=True, type=Path,
                   help="the sample's patch store (results/patches/S.h5): cell positions")
    s.add_argument("--cutoffs", required=True, type=Path, help="from pastflow stain-calibrate")
    s.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table: adds H-scores from measured expression")
    s.add_argument("--panel", type=Path, default=None, help=PANEL_HELP)
    s.add_argument("--regions", type=Path, default=None,
                   help="annotated regions (TSV: cell_id, region) instead of the grid")
    s.add_argument("--cores", type=Path, default=None,
                   help="a tissue-microarray slide's core map (TSV: core, patient, x_px, y_px, "
                        "radius_px): the cores are the regions")
    s.add_argument("--sample", default=None, help="sample name (default: the prediction's stem)")
    s.add_argument("--out-dir", required=True, type=Path,
                   help="folder for hscores.tsv and cells.tsv.gz")
    add_settings_argument(s, "stain")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar (scoring draws none; taken as by every stage)")
    s.set_defaults(func=run_stain)

    i = subparsers.add_parser(
        "stain-images", help="virtual IHC of one sample: virtual stain images",
        description="Draws the virtual stains of the settings' stain.images as pyramidal "
                    "TIFFs, and their thumbnails, from the levels pastflow stain wrote "
                    "(nothing is scored again).")
    i.add_argument("--cells", required=True, type=Path,
                   help="the sample's cells.tsv.gz from pastflow stain: per-cell levels")
    i.add_argument("--hscores", required=True, type=Path,
                   help="the sample's hscores.tsv from pastflow stain: slide H-scores of the "
                        "thumbnail titles")
    i.add_argument("--store", required=True, type=Path,
                   help="the sample's patch store (results/patches/S.h5): H&E and cell centres")
    i.add_argument("--table", type=Path, default=None,
                   help="the sample's QC table: its unit diameter sizes the stain blobs when "
                        "stain.unit_um is null")
    i.add_argument("--panel", type=Path, default=None, help=PANEL_HELP)
    i.add_argument("--regions", type=Path, default=None,
                   help="the annotated regions given to pastflow stain: the thumbnails then "
                        "show no region grid")
    i.add_argument("--cores", type=Path, default=None,
                   help="the core map given to pastflow stain: the thumbnails then show no "
                        "region grid")
    i.add_argument("--sample", default=None,
                   help="sample name (default: the one in --hscores)")
    i.add_argument("--out-dir", required=True, type=Path,
                   help="folder for virtual_{marker}.tif and thumbnails.jpg")
    add_settings_argument(i, "stain")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.set_defaults(func=run_images)

    a = subparsers.add_parser(
        "stain-agreement", help="H-scores from predicted vs measured expression (test slides)",
        description="Pearson r and quadratic kappa (0/1+/2+/3+ classes) per marker between "
                    "H-scores from predicted and from measured expression, per slide and per "
                    "region, with 95% bootstrap intervals, the reason for any undefined value, "
                    "and Bland-Altman and scatter plots.")
    a.add_argument("--hscores", nargs="+", required=True, type=Path,
                   help="hscores.tsv of the test samples with measured expression")
    a.add_argument("--out", required=True, type=Path,
                   help="agreement table (marker, level, pearson_r, n, intervals, kappa, "
                        "reason)")
    a.add_argument("--details", required=True, type=Path,
                   help="summary with Bland-Altman statistics plus every pair (.tsv)")
    a.add_argument("--bland-altman", required=True, type=Path, help="figure (.png)")
    a.add_argument("--scatter", required=True, type=Path, help="figure (.png)")
    add_settings_argument(a, "stain")
    a.set_defaults(func=run_agreement)


def _settings_and_panel(args: argparse.Namespace):
    """The stain settings of ``--settings`` and the panel of ``--panel`` (default: the
    settings' ``panel``, a path to a shipped file found from any working directory)."""
    from pastflow.settings import load_section, project_path
    from pastflow.stain.panel import read_panel
    from pastflow.stain.settings import StainSettings

    settings = load_section(StainSettings, "stain", args.settings)
    return settings, read_panel(args.panel or project_path(settings.panel))


def run_calibrate(args: argparse.Namespace) -> None:
    from pastflow.progress import progress_bar
    from pastflow.stain.calibrate import calibrate_cutoffs, write_cutoffs
    from pastflow.stain.io import read_cell_table

    _, panel = _settings_and_panel(args)
    tables = [read_cell_table(p, "QC table")
              for p in progress_bar(args.tables, desc="reading QC tables", unit="table",
                                    enabled=not args.no_progress)]
    predictions = None
    if args.predictions is not None:
        predictions = [read_cell_table(p, "prediction table") for p in args.predictions]
    write_cutoffs(calibrate_cutoffs(tables, panel, [str(p) for p in args.tables], predictions,
                                    [str(p) for p in args.predictions or []]), args.out)


def run_stain(args: argparse.Namespace) -> None:
    from pastflow.stain.sample import stain_sample

    settings, panel = _settings_and_panel(args)
    stain_sample(args.prediction, args.store, args.cutoffs, panel, args.out_dir, settings,
                 sample=args.sample, table_path=args.table, regions_path=args.regions,
                 cores_path=args.cores)


def run_images(args: argparse.Namespace) -> None:
    from pastflow.stain.images import stain_images

    settings, panel = _settings_and_panel(args)
    stain_images(args.cells, args.hscores, args.store, panel, args.out_dir, settings,
                 sample=args.sample, table_path=args.table, regions_path=args.regions,
                 cores_path=args.cores, progress=not args.no_progress)


def run_agreement(args: argparse.Namespace) -> None:
    from pastflow.settings import load_section
    from pastflow.stain.agreement import write_agreement
    from pastflow.stain.settings import StainSettings

    settings = load_section(StainSettings, "stain", args.settings)
    write_agreement(args.hscores, args.out, args.details, args.bland_altman, args.scatter,
                    n_boot=settings.bootstrap, seed=settings.seed)
