"""Every shell block of the README and docs/*.md runs as written in a plain shell.

Plain: ``PATH=/usr/local/bin:/usr/bin:/bin`` and ``HOME`` only (no venv activated, no
``VIRTUAL_ENV``, no ``PYTHONPATH``), one ``bash -e`` per block, so a variable set on one line
is seen by the next. Each fenced shell block carries a marker, an HTML comment (invisible on
GitHub) on the line right before its fence:

- ``<!-- readme-test: run -->``: every line as written (cheap commands only);
- ``<!-- readme-test: dry-run -->``: ``make X`` as ``make -n X`` and ``-n`` added to each
  ``snakemake`` line (a ``--report`` line without its ``--report <file>``: a report needs the
  run's outputs), so ``make run`` and full runs are checked to resolve, not executed; a
  ``snakemake`` dry run already passed with the same arguments (``--cores`` aside) is not
  repeated (each takes seconds);
- either one ``with <placeholder>=<value>``: the block's placeholder for a user's own folder
  replaced by real data beside the checkout (``../shared/data``), the rest as written;
- ``<!-- readme-test: check: <reason> -->``: for what a test machine cannot run (a GPU
  allocation, a user's own config, a HEST-1k download); the reason is required. The block is
  checked, not run: its syntax (``bash -n``), and that every program under ``.venv/bin/``
  and every ``--profile`` and shipped ``--configfile`` it names exists.

A shell block without a marker fails, so a new one cannot escape. The blocks run in a copy of
the checkout's layout (its files linked, ``config/`` copied, ``../shared`` linked beside it):
the commands write into ``config/`` and ``results/``, which must not touch the checkout's own
(a dry run rewrites ``results/settings/``, which would make the next ``make run`` rerun).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELLS = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!-- readme-test: (?:(?P<mode>run|dry-run)(?: with (?P<subs>.+?))?"
                    r"|check:(?P<reason>.*?)) -->\s*$")
# What the blocks write (config/, results/, .snakemake/) is the copy's own, not the checkout's.
NOT_LINKED = {"config", "results", ".snakemake", ".git", ".pytest_cache"}
TIMEOUT_S = 300
PASSED_DRY_RUNS: set[str] = set()  # snakemake dry runs passed in this session


@dataclass(frozen=True)
class Block:
    where: str            # file:line of the opening fence
    language: str
    code: str             # dedented, as written
    marker: str | None    # the line before the fence, when it is a readme-test marker

    def match(self):
        return MARKER.match(self.marker) if self.marker else None


def fenced_blocks(path: Path, root: Path = REPO) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = lines[i - 1] if i else ""
        blocks.append(Block(f"{path.relative_to(root)}:{i + 1}", opening.group(2),
                            textwrap.dedent("\n".join(lines[i + 1:end])) + "\n",
                            before if MARKER.match(before) else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for doc in DOCUMENTS for b in fenced_blocks(REPO / doc)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in SHELLS]


def marker_problems(blocks: list[Block]) -> list[str]:
    """A marker on each shell block, a reason on each skip, a placeholder the block holds;
    and no command hides in an untagged block."""
    problems = []
    for block in (b for b in blocks if b.language in SHELLS):
        match = block.match()
        if match is None:
            problems.append(f"{block.where}: no `<!-- readme-test: run|dry-run|check: <reason> -->` "
                            "on the line before the fence")
        elif match["reason"] is not None and not match["reason"].strip():
            problems.append(f"{block.where}: a check needs its reason")
        else:
            for old, _ in substitutions(match):
                if old not in block.code:
                    problems.append(f"{block.where}: placeholder {old!r} is not in the block")
    for block in blocks:
        if not block.language and re.search(r"^\s*(\.venv/bin/|make |snakemake |\w+=\S+ \.venv/)",
                                            block.code, re.MULTILINE):
            problems.append(f"{block.where}: a command in an untagged block: tag it ```bash")
    return problems


def test_every_shell_block_is_marked():
    problems = marker_problems(ALL_BLOCKS)
    assert not problems, "\n".join(problems)
    assert len(SHELL_BLOCKS) >= 8  # the README's own, found (a parser gone blind passes nothing)


def test_an_unmarked_block_cannot_escape(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("\n".join([
        "```bash", "make run", "```", "",                                          # line 1
        "<!-- readme-test: check: -->", "```sh", "srun x", "```", "",              # line 6
        "<!-- readme-test: run with /my/data=../shared/data -->",
        "```bash", "ls /data", "```", "",                                          # line 11
        "```", ".venv/bin/pastflow --help", "```", "",                             # line 15
        "<!-- readme-test: run -->", "```bash", "ls", "```", ""]))                 # passes
    problems = marker_problems(fenced_blocks(doc, tmp_path))
    assert [p.split(":", 2)[1] for p in problems] == ["1", "6", "11", "15"], problems
    assert "no `<!-- readme-test" in problems[0] and "needs its reason" in problems[1]
    assert static_problems(".venv/bin/snakemake --profile config/profiles/slurm "
                           "--configfile my_config.yaml\n", REPO) == []
    found = static_problems(".venv/bin/nope --profile config/profiles/none (\n", REPO)
    assert [p.split(":")[0] for p in found] == [
        "bash syntax", ".venv/bin/nope", "--profile config/profiles/none"], found
    assert "'/my/data' is not in the block" in problems[2] and "tag it ```bash" in problems[3]


def substitutions(match) -> list[tuple[str, str]]:
    if not match or not match["subs"]:
        return []
    return [tuple(part.split("=", 1)) for part in match["subs"].split(";")]


def split_comment(line: str) -> tuple[str, str]:
    """``command  # comment`` -> the two parts (a ``#`` with quotes after it is in an argument)."""
    found = re.match(r"(.*?)(\s+#[^'\"]*)?$", line)
    return found.group(1), found.group(2) or ""


def as_dry_run(code: str, passed: set[str]) -> tuple[str, set[str]]:
    """``make X`` -> ``make -n X``; ``-n`` on each ``snakemake`` line, without ``--report``;
    a snakemake dry run in ``passed`` (or earlier in the block) left out. Also returns the
    block's snakemake dry runs, for ``passed`` once the block has."""
    out, runs = [], set()
    for line in code.replace("\\\n", " ").splitlines():
        command, comment = split_comment(line)
        if re.match(r"\s*make\s", command):
            command = re.sub(r"^(\s*)make\s", r"\1make -n ", command)
        elif re.search(r"(^|[\s/])snakemake\s", command):
            command = re.sub(r"\s--report\s+\S+", "", command)
            key = re.sub(r"\s--cores\s+\d+|\s(-n|--dry-run)(?=\s|$)", "", command).strip()
            if key in passed | runs:
                command = f"# passed above: {command.strip()}"
            elif not re.search(r"\s(-n|--dry-run)(\s|$)", command):
                command += " -n"
            runs.add(key)
        out.append(command + comment)
    return "\n".join(out) + "\n", runs


def needs_shared_data(code: str, checkout: Path) -> bool:
    """The block, or a config it names, reads ``../shared/data``."""
    texts = [code] + [(checkout / name).read_text() for name in
                      re.findall(r"--configfile\s+(\S+)", code) if (checkout / name).is_file()]
    return any("../shared/data" in text for text in texts)


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory) -> Path:
    """The checkout's layout in a scratch folder: files linked, ``config/`` copied."""
    root = tmp_path_factory.mktemp("readme")
    copy = root / "pastflow"
    copy.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_LINKED:
            (copy / entry.name).symlink_to(entry)
    shutil.copytree(REPO / "config", copy / "config", symlinks=True)
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)  # ../shared/data, as beside the checkout
    return copy


def static_problems(code: str, checkout: Path) -> list[str]:
    """What can be checked of a block that cannot run here: bash syntax, the programs it runs
    from ``.venv/bin/``, the profiles and the shipped configs it names (a user's own
    ``my_*.yaml`` aside)."""
    problems = []
    syntax = subprocess.run(["bash", "-n", "-c", code], capture_output=True, text=True)
    if syntax.returncode:
        problems.append(f"bash syntax: {syntax.stderr.strip()}")
    for program in sorted(set(re.findall(r"(\.venv/bin/[\w.-]+)", code))):
        if not os.access(checkout / program, os.X_OK):
            problems.append(f"{program}: not an executable in the checkout's venv")
    for flag, name in re.findall(r"(--profile|--configfile)\s+(\S+)", code):
        if not (flag == "--configfile" and Path(name).name.startswith("my_")) \
                and not (checkout / name).exists():
            problems.append(f"{flag} {name}: not in the checkout")
    return problems


def plain_shell(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": PLAIN_PATH, "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.where for b in SHELL_BLOCKS])
def test_block_runs_as_written(block, checkout_copy):
    match = block.match()
    if match is None:
        pytest.fail(f"{block.where}: no readme-test marker (see test_every_shell_block_is_marked)")
    if match["reason"] is not None:
        problems = static_problems(block.code, checkout_copy)
        assert not problems, f"{block.where} ({match['reason'].strip()}):\n" + "\n".join(problems)
        return
    code = block.code
    for old, new in substitutions(match):
        code = code.replace(old, new)
    if match["mode"] == "dry-run":
        code, dry_runs = as_dry_run(code, PASSED_DRY_RUNS)
    else:
        dry_runs = as_dry_run(code, set())[1]  # a real run that passes covers its dry run
    if needs_shared_data(code, checkout_copy) and not (SHARED / "data").is_dir():
        pytest.skip(f"{block.where}: reads ../shared/data, which is absent")
    # A run folder the block names (--directory /tmp/...) is removed after, if it made it.
    made = [Path(d) for d in re.findall(r"--directory\s+(/\S+)", code) if not Path(d).exists()]
    try:
        run = plain_shell(code, checkout_copy)
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
    assert run.returncode == 0, (
        f"{block.where} ({match['mode']}) exit {run.returncode}:\n{code}\n"
        f"--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}")
    PASSED_DRY_RUNS.update(dry_runs)


def test_a_rule_runs_from_a_plain_shell(tmp_path):
    """A real job, not a dry run: the rule's command is the interpreter that runs Snakemake,
    found without the venv on PATH."""
    run = plain_shell(f".venv/bin/snakemake --cores 1 --directory '{tmp_path}' "
                      "results/simulated/clinical.tsv", REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    clinical = (tmp_path / "results" / "simulated" / "clinical.tsv").read_text().splitlines()
    assert clinical[0].split("\t")[:3] == ["patient", "os_time", "os_event"]
    assert len(clinical) > 20  # the default cohort's patients, one row each
