"""pastflow.progress: log-friendly progress lines off a terminal (start, throttled, final; no
carriage returns), a tqdm bar on one, silence when disabled; and a real stage's log."""

from __future__ import annotations

import io
import re

import yaml
from tqdm import tqdm

from pastflow.cli import main as cli_main
from pastflow.progress import progress_bar
from test_models_fixtures import cohort  # noqa: F401 (fixture)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_start_throttle_and_end_with_the_total():
    clock, stream = FakeClock(), io.StringIO()
    with progress_bar(total=600, desc="pretrain", unit="step", file=stream, clock=clock) as bar:
        for step in range(600):
            clock.now += 0.4  # 2.5 step/s: 240 s in all
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0] == "pretrain: 0/600 step (0%)"
    assert lines[-1] == "pretrain: 600/600 step in 4 min 0 s, 2.5 step/s, loss=0.0017"
    # 15 s after the last line (38 steps) and at each tenth (60 steps): 2 lines per 24 s.
    middle = lines[1:-1]
    assert len(middle) == 19
    assert middle[0] == "pretrain: 38/600 step (6%) 2.5 step/s, 3 min 45 s left, loss=0.0270"
    assert middle[1].startswith("pretrain: 60/600 step (10%) 2.5 step/s, 3 min 36 s left")
    steps = [int(re.match(r"pretrain: (\d+)/600", line).group(1)) for line in middle]
    assert {60 * k for k in range(1, 10)} <= set(steps)  # every tenth got its line
    assert all(b > a for a, b in zip(steps, steps[1:]))


def test_fast_loops_write_no_more_than_start_and_end():
    clock, stream = FakeClock(), io.StringIO()
    for _ in progress_bar(range(1000), desc="export patches", unit="batch", file=stream,
                          clock=clock):
        clock.now += 0.001  # 1 s in all: tenths come faster than every 2 s
    assert stream.getvalue().splitlines() == ["export patches: 0/1000 batch (0%)",
                                              "export patches: 1000/1000 batch in 1.0 s, "
                                              "1000 batch/s"]


def test_unknown_total_resume_and_early_stop():
    clock, stream = FakeClock(), io.StringIO()

    def chunks():
        for _ in range(40):
            clock.now += 1
            yield b"chunk"

    assert len(list(progress_bar(chunks(), desc="bins s1", unit="chunk", file=stream,
                                 clock=clock))) == 40
    assert stream.getvalue().splitlines() == [
        "bins s1: 0 chunk", "bins s1: 15 chunk 1 chunk/s", "bins s1: 30 chunk 1 chunk/s",
        "bins s1: 40 chunk in 40 s, 1 chunk/s"]

    # Resumed at step 400 of 600 and stopped (preempted) at 450: the rate counts this run only.
    stream = io.StringIO()
    with progress_bar(total=600, initial=400, desc="pretrain", unit="step", file=stream,
                      clock=clock) as bar:
        for _ in range(50):
            clock.now += 0.5
            bar.update(1)
    assert stream.getvalue().splitlines() == [
        "pretrain: 400/600 step (67%)",
        "pretrain: 420/600 step (70%) 2 step/s, 1 min 30 s left",  # the 70% boundary
        "pretrain: 450/600 step (75%) 2 step/s, 1 min 15 s left",  # 15 s after it
        "pretrain: stopped at 450/600 step after 25 s, 2 step/s"]


def test_unit_scale_counts_in_thousands_and_millions():
    clock, stream = FakeClock(), io.StringIO()
    with progress_bar(total=3_000_000, desc="counting t.parquet", unit="transcript",
                      unit_scale=True, file=stream, clock=clock) as bar:
        clock.now += 20
        bar.update(1_000_000)
        clock.now += 40
        bar.update(2_000_000)
    assert stream.getvalue().splitlines() == [
        "counting t.parquet: 0/3.00M transcript (0%)",
        "counting t.parquet: 1.00M/3.00M transcript (33%) 50.0k transcript/s, 40 s left",
        "counting t.parquet: 3.00M/3.00M transcript in 1 min 0 s, 50.0k transcript/s"]


def test_disabled_is_silent_and_a_terminal_gets_tqdm():
    stream = io.StringIO()
    with progress_bar(total=5, desc="quiet", enabled=False, file=stream) as bar:
        bar.update(5)
        bar.set_postfix(loss="1")
    assert list(progress_bar([1, 2], desc="quiet", enabled=False, file=stream)) == [1, 2]
    assert stream.getvalue() == ""

    terminal = Terminal()
    bar = progress_bar(total=5, desc="tty", unit="tile", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(5)
    bar.close()
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()


def test_pretrain_command_writes_progress_lines_to_its_log(cohort, tmp_path, capsys):
    """``pastflow pretrain`` as the rule runs it (stderr not a terminal, no --no-progress)."""
    config = {"seed": 3, "model": {"embed_dim": 16,
                                   "image": {"name": "vit_cell",
                                             "kwargs": {"depth": 1, "embed_dim": 32,
                                                        "num_heads": 2}},
                                   "expression": {"name": "mlp", "kwargs": {"hidden": [32]}},
                                   "pathway": {"kwargs": {"hidden": [16]}},
                                   "reconstruction": {"hidden": 16},
                                   "pathway_head": {"hidden": 16}},
              "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 4,
                        "num_workers": 0}}
    settings = tmp_path / "pretrain.yaml"
    settings.write_text(yaml.safe_dump({"pretrain": config}))
    assert cli_main(["pretrain", "--settings", str(settings),
                     "--stores", *[str(s.store) for s in cohort],
                     "--tables", *[str(s.table) for s in cohort],
                     "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("pretrain: ")]
    assert lines[0] == "pretrain: 0/4 step (0%)"
    assert re.fullmatch(r"pretrain: 4/4 step in [\d.]+ s, .+(step/s|/step), loss=\d\.\d{4}",
                        lines[-1]), lines[-1]
