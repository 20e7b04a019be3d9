"""The nightly sweep: scheduled only when a source prefix is configured, one run at a time."""

import importlib

import pytest

pytestmark = pytest.mark.airflow


def _dag(monkeypatch, **env):
    for name in ("BONITO_SOURCE", "BONITO_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import bonito_dataset

    return importlib.reload(bonito_dataset).bonito_dataset()


def test_nightly_sweep_of_the_configured_source(monkeypatch):
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    dag = _dag(monkeypatch, BONITO_SOURCE="s3://documents/contracts/")
    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.expression == "0 2 * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.params["source"] == "s3://documents/contracts/" and dag.params["full_refresh"] is False


def test_cron_is_configurable(monkeypatch):
    dag = _dag(monkeypatch, BONITO_SOURCE="/data/docs", BONITO_SCHEDULE="30 1 * * 1-5")
    assert dag.timetable.expression == "30 1 * * 1-5"


def test_manual_runs_only_without_a_source(monkeypatch):
    from airflow.sdk.definitions.timetables.simple import NullTimetable

    assert isinstance(_dag(monkeypatch, BONITO_SCHEDULE="0 3 * * *").timetable, NullTimetable)


def test_wiring_runbooks_and_xcom_references(monkeypatch):
    """The DAG file is wiring: each task's runbook is its dags/runbooks/<task_id>.md, generate is
    mapped over the chunk shards, and validate gets the chunk stage's own output."""
    from pathlib import Path

    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    from bonito_airflow.operators import STAGE_OUTPUT_KEY

    dag = _dag(monkeypatch)
    runbooks = Path(__file__).resolve().parents[2] / "dags" / "runbooks"
    for t in dag.tasks:
        assert t.doc_md == (runbooks / f"{t.task_id}.md").read_text(encoding="utf-8"), t.task_id
        assert t.doc_md.splitlines()[1].startswith("**Safe to clear:** "), t.task_id
    chunk, validate = dag.get_task("chunk"), dag.get_task("validate")
    [(_, shards)] = dag.get_task("generate").expand_input.value.items()
    assert isinstance(shards, PlainXComArg) and (shards.operator, shards.key) == (chunk, "return_value")
    assert (validate.chunks.operator, validate.chunks.key) == (chunk, STAGE_OUTPUT_KEY)
    assert validate.generated.operator is dag.get_task("generate")
    assert dag.get_task("summarize").trigger_rule == "all_done"
