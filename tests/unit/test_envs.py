"""Every rule has a conda env, each env lists (pinned as in pyproject.toml) what its rules
import, and ``envs/`` is what ``python -m pastflow.envs`` writes from pyproject.toml.

The imports are found statically: the ``pastflow <stage>`` a rule's shell command calls is
mapped to its package, and every ``pastflow`` module reachable from it by imports is scanned
for third-party imports. A rule is found by its ``rule`` line and its env by its ``conda:``
line, so a new rule is checked as soon as it exists.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from pastflow.envs import outdated_envs, render_envs, write_envs

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


def rules_with_envs() -> dict[str, tuple[Path | None, set[str]]]:
    """rule name -> (its env file, the ``pastflow`` stages its shell command runs)."""
    from pastflow.cli import STAGE_MODULES

    rules = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = "\n" + smk.read_text()
        for block in re.split(r"\n\s*rule ", text)[1:]:
            name = block.split(":", 1)[0].strip()
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            # `{params.pastflow} stain-calibrate ...`, `{params.launch} pretrain ...`
            words = re.findall(r"\{params\.\w+\}\s+([a-z][\w-]*)", block)
            rules[name] = ((smk.parent / env.group(1)).resolve() if env else None,
                           {w for w in words if w in STAGE_MODULES})
    return rules


def module_path(module: str) -> Path | None:
    """The file of a ``pastflow`` module; a package's folder (with or without ``__init__``)."""
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base if base.is_dir() else None


# Modules that import other stages' code inside functions only those stages call: the
# technology registry imports each technology's reader when `pastflow ingest` reads one (and
# the ingest package is scanned whole). Only their module-level imports are followed.
DISPATCHERS = {"pastflow.technologies"}


def third_party_imports(stage_packages: list[str]) -> set[str]:
    """Top-level names of the non-stdlib imports of every module of ``stage_packages`` and of
    every ``pastflow`` module they import (a package reached by an import: its ``__init__``)."""
    todo = [f"{package}.{p.stem}" for package in stage_packages
            for p in module_path(package).glob("*.py")]
    seen, found = set(), set()
    while todo:
        module = todo.pop()
        path = module_path(module)
        if path is not None and path.is_dir():
            path = path / "__init__.py"
        if path is None or not path.is_file() or path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        nodes = tree.body if module in DISPATCHERS else ast.walk(tree)
        for node in nodes:
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


def test_envs_are_generated_from_pyproject():
    """``envs/`` holds exactly the files ``python -m pastflow.envs`` writes: the pins live in
    pyproject.toml only (run that command after editing its dependencies or env extras)."""
    expected = render_envs(REPO / "pyproject.toml")
    assert expected, "pyproject.toml has no env-<name> extra"
    found = {p.stem for p in (REPO / "envs").glob("*.yaml")}
    assert found == set(expected), f"envs/ holds {sorted(found)}, pyproject.toml gives " \
                                   f"{sorted(expected)}: run python -m pastflow.envs"
    for env, text in expected.items():
        assert (REPO / "envs" / f"{env}.yaml").read_text() == text, \
            f"envs/{env}.yaml is not what pyproject.toml gives: run python -m pastflow.envs"


def test_generated_envs_pin_like_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nrequires-python = ">=3.11,<3.13"\n'
                         'dependencies = ["numpy==2.4.6", "scikit-image==0.26.0"]\n'
                         '[project.optional-dependencies]\ndev = ["pytest"]\n'
                         'env-a = ["scikit_image", "numpy"]\n')
    text = render_envs(pyproject)["a"]
    env = yaml.safe_load(text)
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert env["dependencies"][:2] == ["python=3.11", "pip"]
    assert env["dependencies"][2] == {"pip": ["scikit-image==0.26.0", "numpy==2.4.6"]}
    assert set(render_envs(pyproject)) == {"a"}  # other extras are not envs
    write_envs(pyproject, tmp_path / "envs")
    (tmp_path / "envs" / "old.yaml").write_text("stale")
    assert outdated_envs(pyproject, tmp_path / "envs") == [
        f"{tmp_path / 'envs' / 'old.yaml'} (no extra env-old)"]
    write_envs(pyproject, tmp_path / "envs")
    assert [p.name for p in (tmp_path / "envs").iterdir()] == ["a.yaml"]
    assert outdated_envs(pyproject, tmp_path / "envs") == []
    for bad, problem in [('"scipy"', "scipy is not pinned"), ('"numpy==2.4.6"', "bare name")]:
        pyproject.write_text(pyproject.read_text().replace('"numpy"]', f"{bad}]"))
        with pytest.raises(ValueError, match=problem):
            render_envs(pyproject)
        pyproject.write_text(pyproject.read_text().replace(f"{bad}]", '"numpy"]'))


def test_every_rule_has_an_env_and_every_env_a_rule():
    assert RULES, "no rules found"
    missing = [name for name, (env, _) in RULES.items() if name != "all" and env is None]
    assert not missing, f"rules without conda: {missing}"
    for name, (env, _) in RULES.items():
        if env is not None:
            assert env.is_file(), f"rule {name}: {env} does not exist"
            assert env.parent == REPO / "envs"
    used = {env.stem for env, _ in RULES.values() if env is not None}
    unused = sorted({p.stem for p in (REPO / "envs").glob("*.yaml")} - used)
    assert not unused, f"envs no rule uses: {unused} (drop their env- extras)"


def test_every_rule_with_an_env_runs_a_pastflow_stage():
    """So that the next test checks its env (a rule that runs no ``pastflow <stage>`` would
    go unchecked)."""
    unchecked = sorted(name for name, (env, stages) in RULES.items() if env and not stages)
    assert not unchecked, f"rules whose pastflow stage is not found: {unchecked}"


@pytest.mark.parametrize("rule", sorted(n for n, (e, s) in RULES.items() if e and s))
def test_env_lists_what_the_rule_imports_pinned_like_pyproject(rule):
    env_file, stages = RULES[rule]
    pins, project = env_pins(env_file), pinned_in_pyproject()
    imports = third_party_imports(sorted({stage_package(stage) for stage in stages}))
    assert imports, f"rule {rule}: found no imports for {sorted(stages)}"
    for name in sorted(imports):
        dist = PROVIDED_BY.get(name) or DISTRIBUTIONS.get(name, name.replace("_", "-"))
        assert dist in pins, f"rule {rule} imports {name}: {dist} missing from {env_file.name}"
        if dist in project:
            assert pins[dist] == project[dist], f"{env_file.name}: {dist}=={pins[dist]}, " \
                                                f"pyproject pins {project[dist]}"
