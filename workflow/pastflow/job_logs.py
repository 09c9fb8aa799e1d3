"""The end of a failed job's log, for the console.

A rule's command writes to its log file; when it fails Snakemake says only that the command
exited non-zero. The Snakefile's ``onerror`` handler prints the last lines of each failed
job's log with :func:`log_tails`, so the reason (a missing module, a bad file) is on screen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path

TAIL_LINES = 20


def log_tail(path: str | Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of ``path`` (undecodable bytes replaced), or a line saying
    why there are none."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            tail = [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError as err:
        return [f"(no log: {err.strerror or err})"]
    return tail or ["(empty log)"]


def log_tails(paths: Iterable[str | Path], lines: int = TAIL_LINES) -> str:
    """A block per log: a header naming it, then its last ``lines`` lines, indented."""
    blocks = []
    for path in paths:
        tail = log_tail(path, lines)
        body = "\n".join(f"    {line}" for line in tail)
        blocks.append(f"pastflow: last {lines} lines of the failed job's log {path}:\n{body}")
    return "\n".join(blocks)
