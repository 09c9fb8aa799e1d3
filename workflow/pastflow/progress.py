"""Progress bars that stay readable in a log file.

Snakemake runs every rule with stdout and stderr redirected to the rule's log, where tqdm's
carriage-return bars pile up into one unreadable line. :func:`progress_bar` gives a normal tqdm
bar on a terminal and, anywhere else, plain lines a person can ``tail -f``::

    pretrain: 0/600 step (0%)
    pretrain: 120/600 step (20%) 3.1 step/s, 2 min 35 s left, loss=0.4123
    pretrain: 600/600 step in 3 min 12 s, 3.1 step/s, loss=0.2011
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from tqdm import tqdm

INTERVAL_S = 15.0  # at most one log line per this many seconds...
TENTH_GAP_S = 2.0  # ...or per tenth of the total, when that is no more often than this


class ProgressBar(Protocol):
    """What stages use of a bar: tqdm's, and :class:`LogProgress`'s."""

    n: float

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True,
                    **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: float | None = None,
                 unit: str = "it", enabled: bool = True, initial: float = 0,
                 unit_scale: bool = False, file: IO[str] | None = None,
                 interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> Any:
    """A progress bar over ``iterable`` (or ``total`` units counted with ``update``).

    tqdm on a terminal (``file``, default stderr, is a tty); otherwise a :class:`LogProgress`
    writing a line at the start, then at most one every ``interval`` seconds (and one at each
    tenth of ``total``, at most every 2 s), and one at the end; nothing when not ``enabled``.
    Either is iterable, a context manager, and has ``update``, ``set_postfix`` and ``close``.
    ``initial``: units already done (a resumed run); ``unit_scale``: 1.2M rather than 1200000.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    stream = sys.stderr if file is None else file  # looked up now: tests and CLIs swap it
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                    unit_scale=unit_scale, file=stream)
    return LogProgress(iterable, desc=desc, total=total, unit=unit, initial=initial,
                       unit_scale=unit_scale, file=stream, interval=interval, clock=clock)


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogProgress:
    """Progress as whole lines (no carriage returns), throttled for a log file."""

    def __init__(self, iterable: Iterable | None, *, desc: str, total: float | None, unit: str,
                 initial: float, unit_scale: bool, file: IO[str], interval: float,
                 clock: Callable[[], float]) -> None:
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n = self._initial = initial
        self._scale, self._file, self._interval, self._clock = unit_scale, file, interval, clock
        self._postfix = ""
        self._closed = False
        self._start = self._last = clock()
        self._last_tenth = self._tenth()
        self._write(self._line(self._start))

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.total and self.n >= self.total:
            return  # the final line says it
        now = self._clock()
        since = now - self._last
        if since >= self._interval or (since >= TENTH_GAP_S and self._tenth() > self._last_tenth):
            self._write(self._line(now))
            self._last, self._last_tenth = now, self._tenth()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Values shown after the rate on the next line (e.g. the loss); prints nothing."""
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={_value(v)}" for k, v in items.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        elapsed = now - self._start
        done = f"{self._count(self.n)}" + (f"/{self._count(self.total)}" if self.total else "")
        if self.total and self.n < self.total:
            head = f"{self.desc}: stopped at {done} {self.unit} after {_duration(elapsed)}"
        else:
            head = f"{self.desc}: {done} {self.unit} in {_duration(elapsed)}"
        rate = self._rate(now)
        self._write(", ".join(p for p in (head, rate and self._rate_text(rate), self._postfix)
                              if p))

    def _tenth(self) -> int:
        return math.floor(10 * self.n / self.total) if self.total else 0

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        return (self.n - self._initial) / elapsed if elapsed > 0 else 0.0

    def _rate_text(self, rate: float) -> str:
        if rate >= 1:
            return f"{self._count(rate) if self._scale else _significant(rate)} {self.unit}/s"
        return f"{_duration(1 / rate)}/{self.unit}"

    def _count(self, n: float) -> str:
        if self._scale and abs(n) >= 1000:
            return tqdm.format_sizeof(n)
        return f"{n:g}" if n != int(n) else str(int(n))

    def _line(self, now: float) -> str:
        line = f"{self.desc}: {self._count(self.n)}"
        if self.total:
            line += f"/{self._count(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            line += f" {self.unit}"
        rate = self._rate(now)
        if rate > 0:
            line += f" {self._rate_text(rate)}"
            if self.total:
                line += f", {_duration((self.total - self.n) / rate)} left"
        return f"{line}, {self._postfix}" if self._postfix else line

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()


def _significant(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 999.5 else f"{x:.0f}"  # never 1e+03


def _value(v: Any) -> str:
    return _significant(v) if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    """``0.4 s``, ``35 s``, ``2 min 35 s``, ``1 h 5 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
