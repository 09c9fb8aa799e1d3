"""The per-rule conda envs (``envs/<name>.yaml``), written from ``pyproject.toml``.

The pins live in one place, the ``[project] dependencies`` of ``pyproject.toml``. Each env is
an extra ``env-<name>`` there that lists, by name only, the distributions its rules import;
this module writes ``envs/<name>.yaml`` with every name pinned as in ``dependencies`` and the
Python of ``requires-python``. ``python -m pastflow.envs`` rewrites ``envs/``; with
``--check`` it only says whether ``envs/`` is up to date (exit status 1 when not).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from pastflow.settings import PROJECT_ROOT

PYPROJECT = PROJECT_ROOT / "pyproject.toml"
ENVS_DIR = PROJECT_ROOT / "envs"
EXTRA_PREFIX = "env-"
CHANNELS = ("conda-forge", "nodefaults")


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def render_envs(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """``{env name: envs/<name>.yaml text}`` for every ``env-<name>`` extra of ``pyproject``.

    Raises:
        ValueError: an extra names a distribution that ``dependencies`` does not pin, or
            gives a version itself (the pins live in ``dependencies`` only).
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = {}
    for dep in project["dependencies"]:
        name, _, version = dep.partition("==")
        pins[_normalise(name)] = f"{name.strip()}=={version.strip()}"
    python = re.search(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    envs = {}
    for extra, names in project.get("optional-dependencies", {}).items():
        if not extra.startswith(EXTRA_PREFIX):
            continue
        env = extra[len(EXTRA_PREFIX):]
        lines = [
            f"# Generated from pyproject.toml (extra {extra}) by `python -m pastflow.envs`:",
            "# edit the extra, not this file. Pins as in [project] dependencies.",
            "channels:",
            *(f"  - {channel}" for channel in CHANNELS),
            "dependencies:",
            f"  - python={python}",
            "  - pip",
            "  - pip:",
        ]
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"{pyproject}: extra {extra}: {name!r} is not a bare name "
                                 "(versions are pinned in [project] dependencies only)")
            if _normalise(name) not in pins:
                raise ValueError(f"{pyproject}: extra {extra}: {name} is not pinned in "
                                 "[project] dependencies")
            lines.append(f"      - {pins[_normalise(name)]}")
        envs[env] = "\n".join(lines) + "\n"
    return envs


def write_envs(pyproject: Path = PYPROJECT, out_dir: Path = ENVS_DIR) -> list[Path]:
    """Write ``out_dir/<name>.yaml`` for every env and delete the env files of no extra."""
    envs = render_envs(pyproject)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(out_dir.glob("*.yaml")) - {out_dir / f"{env}.yaml" for env in envs}:
        stale.unlink()
    written = []
    for env, text in envs.items():
        path = out_dir / f"{env}.yaml"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def outdated_envs(pyproject: Path = PYPROJECT, out_dir: Path = ENVS_DIR) -> list[str]:
    """The env files that differ from what ``pyproject`` generates (missing, stale, extra)."""
    envs = render_envs(pyproject)
    wanted = {out_dir / f"{env}.yaml": text for env, text in envs.items()}
    found = set(out_dir.glob("*.yaml"))
    return sorted(
        [str(p) for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
        + [f"{p} (no extra {EXTRA_PREFIX}{p.stem})" for p in found - set(wanted)]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pastflow.envs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when envs/ is not what pyproject.toml gives")
    args = parser.parse_args(argv)
    if args.check:
        outdated = outdated_envs()
        for path in outdated:
            print(f"outdated: {path}", file=sys.stderr)
        return 1 if outdated else 0
    written = write_envs()
    print(f"wrote {len(written)} env files to {ENVS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
