"""Write every output under a temporary name and rename it when complete.

A killed job then leaves only ``*.tmp-*`` debris, never a file that Snakemake
(or a user) would take for a finished output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _tmp_sibling(path: Path) -> Path:
    # Same directory, so the final rename is atomic on one filesystem.
    # The suffix is kept so writers that dispatch on it (PIL, pandas) still work.
    return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write a file *or* directory to; rename it to ``path`` on success.

    On any exception the temporary output is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"{path}: the writer produced nothing")
    _remove(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Like :func:`atomic_path` for several outputs that must appear together or not at all."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]
