"""Every rule has a conda env, and each env lists (pinned as in pyproject.toml) what its rule imports.

The imports are found statically: the ``pastflow <stage>`` a rule's shell command calls is
mapped to its package, and every ``pastflow`` module reachable from it by imports is scanned
for third-party imports.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "workflow" / "pastflow"
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml",
    "openslide": "openslide-python", "spatialdata_io": "spatialdata-io", "sksurv": "scikit-survival",
}
# Imported, but provided by another listed distribution.
PROVIDED_BY = {"openslide_bin": "openslide-bin", "numcodecs": "zarr", "xarray": "spatialdata",
               "dask": "spatialdata", "shapely": "spatialdata", "geopandas": "spatialdata",
               "multiscale_spatial_image": "spatialdata", "spatial_image": "spatialdata"}


def pinned_in_pyproject() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps if "==" in d)


def rules_with_envs() -> dict[str, tuple[str, str]]:
    """rule name -> (env file, pastflow stage its shell command runs)."""
    rules = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = "\n" + smk.read_text()
        for block in re.split(r"\n\s*rule ", text)[1:]:
            name = block.split(":", 1)[0].strip()
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            stage = re.search(r'\{params\.pastflow\} (\w+)', block)
            rules[name] = ((smk.parent / env.group(1)).resolve() if env else None,
                           stage.group(1) if stage else None)
    return rules


def module_path(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(start_modules: list[str]) -> set[str]:
    seen, todo, found = set(), list(start_modules), set()
    while todo:
        module = todo.pop()
        path = module_path(module)
        if path is None or path in seen:
            continue
        seen.add(path)
        if path.name == "__init__.py":  # a package: scan all its modules
            todo += [f"{module}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "pastflow":
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def stage_package(stage: str) -> str:
    """The package whose ``cli`` module registers the ``pastflow <stage>`` sub-command."""
    from pastflow.cli import STAGE_MODULES

    return STAGE_MODULES[stage].rsplit(".", 1)[0]


def env_pins(env_file: Path) -> dict[str, str]:
    env = yaml.safe_load(env_file.read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pins.update(dict(p.split("==") for p in dep.get("pip", [])))
    return pins


RULES = rules_with_envs()


def test_every_rule_has_an_env():
    assert RULES, "no rules found"
    missing = [name for name, (env, _) in RULES.items() if name != "all" and env is None]
    assert not missing, f"rules without conda: {missing}"
    for name, (env, _) in RULES.items():
        if env is not None:
            assert env.is_file(), f"rule {name}: {env} does not exist"
            assert env.parent == REPO / "envs"


@pytest.mark.parametrize("rule", sorted(n for n, (e, s) in RULES.items() if e and s))
def test_env_lists_what_the_rule_imports_pinned_like_pyproject(rule):
    env_file, stage = RULES[rule]
    pins, project = env_pins(env_file), pinned_in_pyproject()
    imports = third_party_imports([stage_package(stage)])
    assert imports, f"rule {rule}: found no imports for stage {stage}"
    for name in sorted(imports):
        dist = PROVIDED_BY.get(name) or DISTRIBUTIONS.get(name, name.replace("_", "-"))
        assert dist in pins, f"rule {rule} imports {name}: {dist} missing from {env_file.name}"
        if dist in project:
            assert pins[dist] == project[dist], f"{env_file.name}: {dist}=={pins[dist]}, " \
                                                f"pyproject pins {project[dist]}"
