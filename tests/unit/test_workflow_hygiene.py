"""Workflow hygiene: `snakemake --lint` and `snakefmt --check` clean, the workflow catalog's
usage file in place, and the real-data configs valid (config keys against their settings
classes: tests/unit/test_settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


def run(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_snakemake_lint_is_clean(repo_root):
    lint = run(repo_root, str(BIN / "snakemake"), "--lint", "--nolock")
    out = lint.stdout + lint.stderr
    assert lint.returncode == 0 and "Lints for" not in out, out[-4000:]


def test_snakefmt_is_clean(repo_root):
    check = run(repo_root, str(BIN / "snakefmt"), "--check", "workflow")
    assert check.returncode == 0, (check.stdout + check.stderr)[-4000:]


def test_catalog_usage_file(repo_root):
    catalog = yaml.safe_load((repo_root / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True
    assert catalog["usage"]["report"] is True


def merged(base: dict, override: dict) -> dict:
    """Snakemake's merge of a --configfile over the default config (nested keys kept)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


@pytest.mark.parametrize("name", ["her2st.yaml"])
def test_real_data_configs_validate_over_the_defaults(repo_root, name):
    from pastflow.config import resolve_workflow_config

    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config = merged(default, yaml.safe_load((repo_root / "config" / name).read_text()))
    settings = resolve_workflow_config(config, source=name)
    assert settings.stain.panel == "resources/ihc_panel.yaml"  # kept from the defaults
    assert not settings.simulate.enabled


def test_architecture_page_names_every_rule_and_command(repo_root):
    """docs/architecture.md is the map from a rule to its command: none may be missing."""
    import re

    from pastflow.cli import STAGE_MODULES

    page = (repo_root / "docs" / "architecture.md").read_text()
    rules = set()
    for path in (repo_root / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^\s*rule (\w+):", path.read_text(), re.MULTILINE))
    assert rules, "no rules found"
    missing = sorted(r for r in rules if f"| `{r}`" not in page)
    missing += sorted(c for c in STAGE_MODULES if f"`pastflow {c}" not in page)
    assert not missing, f"docs/architecture.md lacks: {missing}"
