"""Every name the benchmarks import from attachflow exists, including the imports inside
their functions (which run only on the lab): a rename in the package cannot leave a
documented benchmark command failing at its first step unnoticed."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def attachflow_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attachflow"):
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_what_a_benchmark_imports_from_attachflow_exists(path):
    for module, name in attachflow_imports(path):
        found = importlib.import_module(module)
        assert hasattr(found, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{path.name}: from {module} import {name}"


def test_the_check_sees_the_imports_inside_functions():
    labkit = next(p for p in BENCHMARKS if p.name == "labkit.py")
    assert ("attachflow.identity", "make_session") in set(attachflow_imports(labkit))
