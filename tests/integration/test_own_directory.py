"""The README's own-directory example, run as written (the HER2ST config, ../shared/data)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.realdata, pytest.mark.slow]

MARKER = "<!-- own-directory example"
RUN_DIR = "/tmp/pastflow-her2st"  # the folder the README names


def readme_block(repo_root) -> str:
    """The bash block right after the README's own-directory marker."""
    text = (repo_root / "README.md").read_text()
    after = text[text.index(MARKER):]
    return re.search(r"```bash\n(.*?)```", after, re.DOTALL).group(1)


def test_readme_own_directory_example_runs_as_written(repo_root, shared_data):
    if not (shared_data / "her2st").is_dir():
        pytest.skip("../shared/data/her2st is absent")
    block = readme_block(repo_root)
    assert f"--directory {RUN_DIR}" in block
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    try:
        # A plain shell in the checkout: no venv activated, the commands as the README shows.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=repo_root, env=env,
                             capture_output=True, text=True, timeout=600)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-4000:]
        # The plan covers the five sections, found through the checkout's sheet and data_root,
        # and the run's files went to its own folder, not to the checkout.
        jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE))
        assert jobs["ingest"] == "5" and jobs["pretrain"] == "1" and jobs["evaluate"] == "1"
        assert os.path.isfile(f"{RUN_DIR}/results/settings/qc.json")
    finally:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
