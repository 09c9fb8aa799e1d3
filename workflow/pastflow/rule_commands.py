"""The command fragments rule shell lines share, every value in them shell-quoted.

A rule's shell line quotes each of its own placeholders (``{input.x:q}``); what it cannot
quote is a fragment that is itself shell code (the ``pastflow`` command, an optional flag
with its value). These are built here, so that no path, id or setting reaches a shell as
code: a checkout or data folder named ``O'Brien $(...)`` stays one argument.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from pastflow.launch import GPUS_ENV


def pastflow_command(checkout: str | Path, python: str) -> str:
    """``python -m pastflow`` on this checkout's package: ``PYTHONPATH`` gets the checkout's
    ``workflow/`` folder first (the job's own ``PYTHONPATH`` kept after it). ``python`` is
    the interpreter that runs Snakemake (so a plain shell needs no activated venv), or
    ``python`` of a rule's conda env."""
    return _on_checkout(checkout, python, "-m pastflow")


def pastflow_launcher(checkout: str | Path, python: str, gpus: int = 0) -> str:
    """The pastflow command for ``gpus`` GPUs: one process on CPU (``gpus`` < 1), else
    torchrun of the same interpreter with one process per GPU, rendezvous on this host,
    through :mod:`pastflow.launch` (which keeps the resumable exit status 75 that torchrun
    would replace), with ``PASTFLOW_GPUS`` set: a process that finds no CUDA then fails
    (:mod:`pastflow.models.device`) instead of training on the CPU."""
    if gpus < 1:
        return pastflow_command(checkout, python)
    return _on_checkout(checkout, python, f"-m pastflow.launch --nproc-per-node={int(gpus)}",
                        env=f"{GPUS_ENV}={int(gpus)} ")


def _on_checkout(checkout: str | Path, python: str, args: str, env: str = "") -> str:
    return (f"PYTHONPATH={shlex.quote(str(checkout))}${{PYTHONPATH:+:$PYTHONPATH}} "
            f"{env}{shlex.quote(python)} {args}")


def option(flag: str, value: str | Path | None) -> str:
    """``flag value`` with the value quoted, or nothing for an absent value (an optional
    input the job does not have)."""
    return f"{flag} {shlex.quote(str(value))}" if value else ""


def options(pairs: Iterable[tuple[str, str | Path | None]]) -> str:
    """Several :func:`option`, the absent ones left out."""
    return " ".join(part for part in (option(flag, value) for flag, value in pairs) if part)


def list_option(flag: str, values: Iterable[str | Path]) -> str:
    """``flag v1 v2 ...`` with each value quoted, or nothing for no values (an optional
    list input the job does not have)."""
    values = [shlex.quote(str(value)) for value in values]
    return " ".join([flag, *values]) if values else ""
