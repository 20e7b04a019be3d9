"""Imports follow the pipeline: DAG -> plugins -> stages -> foundation. No stage imports another,
the foundation imports no stage, and the library imports no Airflow."""

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "bonito_tasks"
STAGES = ("extract", "chunk", "generate", "validate", "compare", "publish")


def _module(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bonito_tasks" and parts[1] in STAGES else None


FILES = sorted(LIBRARY.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_stage_imports_another_and_the_foundation_imports_no_stage(path):
    own = _stage_of(_module(path))
    crossing = sorted(m for m in _imports(path) if (stage := _stage_of(m)) and stage != own)
    assert not crossing, f"{_module(path)} imports {crossing}: stages sit side by side over the foundation"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_library_does_not_import_airflow(path):
    assert not [m for m in _imports(path) if m == "airflow" or m.startswith("airflow.")]


def test_the_check_sees_a_crossing(tmp_path):
    """The rule itself can fail: a chunk module importing validate is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bonito_tasks.validate import check_examples\n")
    assert any(_stage_of(m) == "validate" for m in _imports(bad))
