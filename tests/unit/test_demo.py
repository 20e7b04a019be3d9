"""`make demo` can resume its last run: the run-id selection and the argument handling (no DAG runs)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bonito_dev.demo import LAST_RUN_FILE, NothingToResume, choose_run, demo_conf, parse_args, record_run
from conftest import REPO

NOW = datetime(2026, 11, 28, 20, 53, 4, 123456, tzinfo=UTC)


def test_a_new_run_is_named_as_dag_test_names_it(tmp_path):
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    when, run_id, conf = choose_run(tmp_path, resume=False, now=NOW)
    assert when == NOW.replace(microsecond=0)
    # What dag.test(logical_date=when, run_after=when) calls to name its run.
    assert run_id == DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=when, run_after=when)
    assert run_id == "manual__2026-11-28T20:53:04+00:00" and conf == demo_conf(tmp_path)
    assert conf["store"] == str(tmp_path / "store")


def test_resume_reuses_the_recorded_run(tmp_path):
    when, run_id, conf = choose_run(tmp_path, resume=False, now=NOW)
    record_run(tmp_path, when, run_id, conf | {"note": "as recorded"})
    again = choose_run(tmp_path, resume=True, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert again == (when, run_id, conf | {"note": "as recorded"})
    assert json.loads((tmp_path / LAST_RUN_FILE).read_text())["run_id"] == run_id


def test_resume_without_an_earlier_run_says_so(tmp_path):
    with pytest.raises(NothingToResume, match="no demo run to resume"):
        choose_run(tmp_path, resume=True)


def test_arguments():
    assert parse_args([]).resume is False
    assert parse_args(["--resume"]).resume is True
    assert parse_args([]).output == REPO / "demo-output"
    assert parse_args(["--output", "/tmp/d"]).output == Path("/tmp/d")
    with pytest.raises(SystemExit):
        parse_args(["--bogus"])


@pytest.mark.parametrize("make_args, expected", [([], ""), (["RESUME=1"], "--resume")])
def test_make_demo_passes_resume(make_args, expected):
    dry = subprocess.run(["make", "-n", "-o", ".venv/bin/.installed", "demo", *make_args], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    [line] = [line for line in dry.splitlines() if "bonito_dev.demo" in line]
    assert line.split("bonito_dev.demo", 1)[1].strip() == expected
