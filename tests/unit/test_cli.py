"""``pastflow <stage>``: every stage maps to the module that defines it, and a job imports
only its own stage."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from pastflow.cli import STAGE_MODULES, build_parser


def test_each_stage_is_defined_by_its_module():
    for stage, module in STAGE_MODULES.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(subparsers)
        assert stage in subparsers.choices, f"{module} does not define `pastflow {stage}`"


def test_help_lists_every_stage():
    parser = build_parser(["--help"])
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(STAGE_MODULES) <= set(choices)


def test_a_stage_does_not_import_the_others():
    code = ("import sys; from pastflow.cli import build_parser; build_parser(['embed']);"
            "print(' '.join(m for m in ('scanpy', 'spatialdata', 'pastflow.simulate.cli')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
