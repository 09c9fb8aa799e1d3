"""Workflow hygiene: `snakemake --lint` and `snakefmt --check` clean, every config key
documented in config/README.md, and the workflow catalog's usage file in place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
# pretrain.* keys are documented against the model's DEFAULTS, which the README lists in full.
UNDOCUMENTED_OK = {"pretrain"}


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


def leaf_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in ("simulate.n_cells",):
            keys += leaf_keys(value, f"{path}.") if path != "resources" else [path]
        else:
            keys.append(path)
    return keys


def test_every_config_key_is_documented(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    readme = (repo_root / "config" / "README.md").read_text()
    missing = [key for key in leaf_keys(config)
               if key.split(".")[0] not in UNDOCUMENTED_OK and f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not describe: {missing}"


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
    from pastflow.models.config import resolve_config
    from pastflow.sheet import validate_config

    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config = merged(default, yaml.safe_load((repo_root / "config" / name).read_text()))
    validate_config(config, source=name)
    resolve_config(config["pretrain"], source=f"{name}: pretrain")
    assert config["stain"]["panel"] == default["stain"]["panel"]  # kept from the defaults
    assert not config["simulate"]["enabled"]
