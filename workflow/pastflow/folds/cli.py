"""``pastflow folds``: the workflow once per fold, each sample of the sheet tested in turn.

Each fold runs Snakemake (the interpreter running this command) up to the evaluation
(``results/predict/metrics.tsv`` and ``paired.tsv``) in a directory of its own,
``<workdir>/test_<sample>/``, with a copy of the sheet whose splits are the fold's (sheet
paths stay relative to the config's ``data_root``, made absolute). A fold already done is
left as it is (Snakemake finds nothing to do), so the command resumes. The table is written
when every fold has finished.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"
TARGETS = ("results/predict/metrics.tsv", "results/predict/paired.tsv")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "folds", help="run the workflow once per fold (each sample tested in turn) and "
                      "tabulate every fold's scores",
        description="Leave-one-sample-out: each sample of the sheet is the test sample once, "
                    "the next one validates (early stopping) and the others train. Runs "
                    "Snakemake per fold up to the evaluation and writes one table.")
    parser.add_argument("--configfile", nargs="+", type=Path, required=True,
                        help="workflow config file(s), merged over config/config.yaml in "
                             "this order (e.g. config/her2st.yaml)")
    parser.add_argument("--out", type=Path, default=Path("results/folds.tsv"),
                        help="the folds table (TSV; default results/folds.tsv)")
    parser.add_argument("--workdir", type=Path, default=Path("results/folds"),
                        help="one Snakemake directory per fold under this (default "
                             "results/folds)")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores (default 2)")
    parser.set_defaults(func=run_folds)


def run_folds(args: argparse.Namespace) -> None:
    import pandas as pd

    from pastflow.atomic import atomic_path
    from pastflow.folds.plan import read_sheet_rows, rotate, write_fold_sheet
    from pastflow.folds.table import FOLD_COLUMNS, fold_rows, tally

    sheet, data_root = _sheet_and_data_root(args.configfile)
    rows = read_sheet_rows(sheet)
    folds = rotate(list(rows["sample"]), source=sheet)
    tables = []
    for number, fold in enumerate(folds, 1):
        directory = (args.workdir / fold.name).resolve()
        fold_sheet = write_fold_sheet(rows, fold, directory / "samples.tsv")
        print(f"fold {number}/{len(folds)}: test {fold.test}, val {fold.val}, train "
              f"{', '.join(fold.train)} -> {directory}", flush=True)
        start = time.perf_counter()
        _snakemake(directory, args.configfile, fold_sheet, data_root, args.cores)
        print(f"fold {number}/{len(folds)} done in {(time.perf_counter() - start) / 60:.1f} min",
              flush=True)
        tables.append(fold_rows(fold, *(directory / t for t in TARGETS)))
    table = pd.concat(tables, ignore_index=True)[list(FOLD_COLUMNS)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    print(tally(table).to_string(index=False))
    print(f"-> {args.out}")


def _sheet_and_data_root(configfiles: list[Path]) -> tuple[Path, Path]:
    """The sheet and data root the merged configs name, as the workflow resolves them."""
    from pastflow.config import resolve_workflow_config
    from pastflow.errors import InputError
    from pastflow.settings import project_path, read_settings_file
    from pastflow.sheet import load_sample_sheet

    from snakemake.utils import update_config

    merged: dict = {}
    for path in [project_path("config/config.yaml"), *configfiles]:
        if not Path(path).is_file():
            raise InputError(path, "no such config file")
        update_config(merged, read_settings_file(path))  # deep, as Snakemake merges them
    settings = resolve_workflow_config(merged, source=str(configfiles[-1]))
    sheet = project_path(settings.samples).resolve()
    data_root = project_path(settings.data_root).resolve()
    # Checked here, before any fold starts: a bad sheet fails once, clearly.
    load_sample_sheet(sheet, data_root, split_by_patient=settings.split_by_patient)
    return sheet, data_root


def _snakemake(directory: Path, configfiles: list[Path], sheet: Path, data_root: Path,
               cores: int) -> None:
    """Snakemake up to the evaluation in ``directory``; its output goes to
    ``directory/folds.log``, whose end an error shows."""
    from pastflow.errors import InputError

    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory",
               str(directory), "--cores", str(cores), *TARGETS,
               "--configfile", *(str(Path(c).resolve()) for c in configfiles),
               "--config", f"samples={sheet}", f"data_root={data_root}"]
    log = directory / "folds.log"
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise InputError(log, f"Snakemake failed in fold directory {directory} "
                              f"(exit {done.returncode}):\n{tail}")
