"""The nightly sweep: scheduled only when a source prefix is configured, one run at a time."""

import importlib

import pytest

pytestmark = pytest.mark.airflow


def _dag(monkeypatch, **env):
    for name in ("BONITO_SOURCE", "BONITO_SCHEDULE", "BONITO_SCHEDULE_CONFIG"):
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
    """The DAG file is wiring: each task's runbook is its dags/runbooks/<task_id>.md, extract and
    chunk are mapped over the plan's partitions, generate over the planned shards, validate_shard
    over the generate shards (with the chunk stage's own output), validate over validate_shard."""
    from pathlib import Path

    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    from bonito_airflow.operators import STAGE_OUTPUT_KEY

    dag = _dag(monkeypatch)
    runbooks = Path(__file__).resolve().parents[2] / "dags" / "runbooks"
    for t in dag.tasks:
        assert t.doc_md == (runbooks / f"{t.task_id}.md").read_text(encoding="utf-8"), t.task_id
        assert t.doc_md.splitlines()[1].startswith("**Safe to clear:** "), t.task_id
    plan, plan_shards, validate = dag.get_task("plan"), dag.get_task("plan_shards"), dag.get_task("validate")
    for mapped in ("extract", "chunk"):
        [(_, partitions)] = dag.get_task(mapped).expand_input.value.items()
        assert isinstance(partitions, PlainXComArg) and (partitions.operator, partitions.key) == (plan, "return_value")
    [(_, shards)] = dag.get_task("generate").expand_input.value.items()
    assert isinstance(shards, PlainXComArg) and (shards.operator, shards.key) == (plan_shards, "return_value")
    validate_shard = dag.get_task("validate_shard")
    [(_, generated)] = validate_shard.expand_input.value.items()
    assert isinstance(generated, PlainXComArg) and generated.operator is dag.get_task("generate")
    chunks = validate_shard.partial_kwargs["chunks"]
    assert (chunks.operator, chunks.key) == (plan_shards, STAGE_OUTPUT_KEY)
    assert dag.get_task("collect_documents").partitions.operator is dag.get_task("extract")
    assert plan_shards.partitions.operator is dag.get_task("chunk")
    assert validate.partitions.operator is validate_shard
    compare = dag.get_task("compare")  # drift against the last release gates approval and publish (#24)
    assert compare.examples.operator is validate and dag.get_task("approve").comparison.operator is compare
    assert dag.get_task("summarize").trigger_rule == "all_done"
    assert dag.get_task("check_params").downstream_task_ids == {"plan"}
    assert not dag.get_task("check_params").upstream_task_ids


# ---- Scheduled runs' own settings: BONITO_SCHEDULE_CONFIG, checked when the DAG is parsed

NIGHTLY = {"hub_repo_id": "org/nightly", "publish_mode": "append", "task_types": ["exqa", "Yes-No Question Answering"],
           "min_pass_rate": 0.8}


def test_scheduled_settings_are_parsed_shown_in_the_docs_and_given_to_check_params(monkeypatch):
    import json

    dag = _dag(monkeypatch, BONITO_SOURCE="s3://documents/", BONITO_SCHEDULE_CONFIG=json.dumps(NIGHTLY))
    assert dag.get_task("check_params").schedule_settings == NIGHTLY
    assert json.dumps(NIGHTLY, sort_keys=True) in dag.doc_md and "BONITO_SCHEDULE_CONFIG" in dag.doc_md
    assert "bonito_schedule_config" in dag.doc_md  # the Variable laid over them at run time
    # The form (manual runs) keeps its defaults.
    assert dag.params["publish_mode"] == "overwrite" and dag.params["hub_repo_id"] is None


def test_without_settings_the_docs_say_scheduled_runs_use_the_defaults(monkeypatch):
    dag = _dag(monkeypatch, BONITO_SOURCE="s3://documents/")
    assert dag.get_task("check_params").schedule_settings == {}
    assert "none (the form's defaults)" in dag.doc_md
    assert "**Scheduled runs:** none" in _dag(monkeypatch).doc_md


@pytest.mark.parametrize(("settings", "named"), [
    ("{'publish_mode': 'append'}", "BONITO_SCHEDULE_CONFIG is not valid JSON"),
    ('"append"', "BONITO_SCHEDULE_CONFIG must be a JSON object"),
    ('{"publish_mod": "append"}', "unknown field 'publish_mod' (did you mean 'publish_mode'?)"),
    ('{"publish_mode": "appendix"}', "publish_mode='appendix': Input should be 'overwrite', 'append' or 'pr'"),
    ('{"min_pass_rate": 1.5}', "min_pass_rate=1.5: Input should be less than or equal to 1"),
    ('{"max_tokens": 1000}', "params in conflict: max_tokens=1000, max_model_len=2048"),
    ('{"task_types": ["poetry"]}', "task_types="),
])
def test_invalid_scheduled_settings_are_an_import_error_naming_the_field(monkeypatch, settings, named):
    """As the dag-processor sees it: the DagBag records an import error for the DAG file."""
    from airflow.dag_processing.dagbag import DagBag

    from bonito_dev.local import REPO

    monkeypatch.setenv("BONITO_SOURCE", "s3://documents/")
    monkeypatch.setenv("BONITO_SCHEDULE_CONFIG", settings)
    bag = DagBag(dag_folder=str(REPO / "dags" / "bonito_dataset.py"))
    assert "bonito_dataset" not in bag.dag_ids
    [error] = bag.import_errors.values()
    assert "ConfigRejected" in error and named in error, error
