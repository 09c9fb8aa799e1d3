"""``pastflow timings``: per-rule totals of Snakemake's benchmark files."""

from __future__ import annotations

import pandas as pd
import pytest

from pastflow.cli import main
from pastflow.errors import InputError
from pastflow.timings.table import TIMING_COLUMNS, stage_timings

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path, seconds, rss, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_timings_sum_per_sample_files_and_read_cohort_files(tmp_path, capsys):
    root = tmp_path / "benchmarks"
    bench(root / "ingest" / "a.tsv", 4.0, 300.5, 3.0)
    bench(root / "ingest" / "b.tsv", 6.0, 812.0, 5.5)
    bench(root / "pretrain.tsv", 61.0, "-", 110.0)  # Snakemake writes '-' when it cannot measure
    table = stage_timings(root)
    assert list(table.columns) == list(TIMING_COLUMNS)
    assert table["rule"].tolist() == ["pretrain", "ingest"]  # longest first
    ingest = table.set_index("rule").loc["ingest"]
    assert (ingest["jobs"], ingest["wall_s"], ingest["max_job_s"]) == (2, 10.0, 6.0)
    assert ingest["cpu_s"] == pytest.approx(8.5) and ingest["max_rss_mb"] == 812.0
    assert pd.isna(table.set_index("rule").loc["pretrain", "max_rss_mb"])

    assert main(["timings", "--benchmarks", str(root), "--out", str(tmp_path / "t.tsv")]) == 0
    printed = capsys.readouterr().out
    assert "total: 3 jobs, 71 s of job wall time" in printed
    assert pd.read_csv(tmp_path / "t.tsv", sep="\t")["jobs"].tolist() == [1, 2]


def test_timings_refuse_a_missing_folder_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="run the workflow first"):
        stage_timings(tmp_path / "absent")
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="no benchmark files"):
        stage_timings(tmp_path / "b")
    (tmp_path / "b" / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="no column 's'"):
        stage_timings(tmp_path / "b")
