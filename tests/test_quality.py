"""Lint and types are part of the suite: ruff (lint + format) and mypy must be clean."""

import importlib.util
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.parametrize(
    "args",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy", "evo_mpi"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(args):
    if importlib.util.find_spec(args[0]) is None:
        pytest.skip(f"{args[0]} not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
