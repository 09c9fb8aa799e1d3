"""Errors the user is meant to read: they name the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input data or configuration.

    The CLI prints the message without a traceback and exits with status 2.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
