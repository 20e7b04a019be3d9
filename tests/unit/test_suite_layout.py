"""The suite's own wiring: `make test` relies on pytest-xdist's groups to run the tests that share
one vLLM engine, or one Airflow deployment, on one worker; and pytest refuses two test modules of
one basename (rootdir-relative imports without __init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_two_test_modules_share_a_basename():
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []


def test_marked_tests_run_on_one_worker_under_loadgroup(tmp_path):
    """tests/conftest.py's grouping hook, in a real `pytest -n 2 --dist loadgroup` run."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    vllm: x\n    deployment: x\n")
    (tmp_path / "test_grouped.py").write_text(
        "import pytest\n"
        + "".join(f"@pytest.mark.vllm\ndef test_engine_{i}(): pass\n" for i in range(4))
        + "".join(f"@pytest.mark.deployment\ndef test_stack_{i}(): pass\n" for i in range(4)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                          "-v", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout + run.stderr
    workers: dict[str, set[str]] = {"vllm": set(), "deployment": set()}
    for line in run.stdout.splitlines():
        if "PASSED" in line and "@" in line:
            workers[line.rsplit("@", 1)[1].strip()].add(line.split("]", 1)[0])
    assert all(len(found) == 1 for found in workers.values()), run.stdout  # each group on one worker
    assert sum(len(found) for found in workers.values()) == 2, run.stdout
    assert sum("PASSED" in line and line.endswith("@vllm") for line in map(str.strip, run.stdout.splitlines())) == 4
