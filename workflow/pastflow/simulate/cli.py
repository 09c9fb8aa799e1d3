"""``pastflow simulate {sample,clinical,bench-slide}``."""

from __future__ import annotations

import argparse

from pastflow.settings import add_settings_argument
from pastflow.technologies import SIMULATED as SIMULATED_TECHNOLOGIES


def _settings(args: argparse.Namespace):
    from pastflow.settings import load_section
    from pastflow.simulate.settings import SimulateSettings

    return load_section(SimulateSettings, "simulate", args.settings)


def _sample(args: argparse.Namespace) -> None:
    from pastflow.errors import InputError
    from pastflow.simulate.cohort import simulate_sample
    from pastflow.simulate.tma import simulate_tma

    settings = _settings(args)
    if args.cores == 0:
        simulate_sample(args.out, args.sample, args.patient, args.technology, seed=args.seed,
                        settings=settings, progress=not args.no_progress)
    elif args.technology != "xenium":
        raise InputError(args.out, f"--cores {args.cores}: a TMA is simulated as xenium only, "
                                   f"not {args.technology!r}")
    else:
        simulate_tma(args.out, args.sample, args.patient, args.cores, settings.cells_for(args.sample),
                     seed=args.seed, settings=settings, progress=not args.no_progress)


def _clinical(args: argparse.Namespace) -> None:
    from pastflow.simulate.clinical import simulate_clinical

    simulate_clinical(args.out, args.patients, cohort_seed=_settings(args).cohort_seed)


def _bench_slide(args: argparse.Namespace) -> None:
    from pastflow.simulate.cohort import write_benchmark_slide

    write_benchmark_slide(args.out_slide, args.out_cells, n_cells=args.n_cells, size_px=args.size_px,
                          mpp=args.mpp, seed=args.seed, progress=not args.no_progress)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="write a simulated cohort in real vendor formats",
                                   description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")

    p = sub.add_parser("sample", help="one sample (slide + vendor data + truth) into OUT/SAMPLE")
    p.add_argument("--out", required=True, help="output folder (the sample goes to OUT/SAMPLE)")
    p.add_argument("--sample", required=True)
    p.add_argument("--patient", required=True,
                   help="patient id; with --cores, the TMA block id (core C is patient BLOCK-C)")
    p.add_argument("--technology", required=True, choices=SIMULATED_TECHNOLOGIES)
    p.add_argument("--seed", type=int, default=0,
                   help="section seed (combined with the sample id; the workflow gives the "
                        "sample's row number)")
    p.add_argument("--cores", type=int, default=0, metavar="N",
                   help="N > 0: a tissue microarray of N cores, each a different patient, "
                        "n_cells cells per core (xenium only); 0: one section of one patient")
    add_settings_argument(p, "simulate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample)

    p = sub.add_parser("clinical", help="OUT/clinical.tsv and OUT/truth_hazard.tsv for patients")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", required=True, nargs="+", metavar="PATIENT")
    add_settings_argument(p, "simulate")
    p.set_defaults(func=_clinical)

    p = sub.add_parser("bench-slide", help="large H&E-only benchmark slide + cell table")
    p.add_argument("--out-slide", required=True, help="output .tif (generic pyramidal TIFF)")
    p.add_argument("--out-cells", required=True, help="output .parquet (cell_id, x_px, y_px, cell_type)")
    p.add_argument("--n-cells", type=int, default=500_000)
    p.add_argument("--size-px", type=int, default=40_000)
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_bench_slide)
