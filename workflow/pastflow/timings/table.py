"""Per-rule totals of Snakemake benchmark files.

Snakemake's ``benchmark:`` file is a TSV with one row per run of the job: ``s`` (wall
seconds), ``max_rss`` (peak resident memory, MB), ``cpu_time`` and more. A rule's files sit in
``<root>/<rule>/`` (one per sample) or are ``<root>/<rule>.tsv`` (cohort-level rules).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pastflow.errors import InputError

TIMING_COLUMNS = ("rule", "jobs", "wall_s", "max_job_s", "cpu_s", "max_rss_mb")


def _rule_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def stage_timings(root: str | Path) -> pd.DataFrame:
    """One row per rule (:data:`TIMING_COLUMNS`), in order of total wall time: its jobs, their
    summed and longest wall time, summed CPU time and the largest peak RSS.

    Raises:
        InputError: no benchmark folder, no file in it, or a file without the ``s`` column.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no benchmark folder; run the workflow first")
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        if "s" not in table.columns:
            raise InputError(path, "not a Snakemake benchmark file (no column 's')")
        last = table.iloc[-1]  # a rerun job appends nothing: Snakemake rewrites the file
        rows.append({"rule": _rule_of(path, root), "s": float(last["s"]),
                     "cpu_time": float(last.get("cpu_time", float("nan"))),
                     "max_rss": pd.to_numeric(last.get("max_rss"), errors="coerce")})
    if not rows:
        raise InputError(root, "no benchmark files (*.tsv) in it")
    jobs = pd.DataFrame(rows)
    out = jobs.groupby("rule").agg(jobs=("s", "size"), wall_s=("s", "sum"), max_job_s=("s", "max"),
                                   cpu_s=("cpu_time", "sum"), max_rss_mb=("max_rss", "max"))
    return out.reset_index().sort_values("wall_s", ascending=False)[list(TIMING_COLUMNS)]


def format_timings(table: pd.DataFrame) -> str:
    """The table as aligned text, with a total line (jobs and summed wall time)."""
    text = table.to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return (f"{text}\ntotal: {int(table['jobs'].sum())} jobs, "
            f"{table['wall_s'].sum():.0f} s of job wall time")
