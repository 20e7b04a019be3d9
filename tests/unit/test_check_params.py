"""check_params, the DAG's first task, and the scheduled runs' settings (plugins/bonito_airflow/schedule.py):
what a manual and a scheduled run end up with, the order of the layers, and how a rejection reads."""

import json
from types import SimpleNamespace
from unittest import mock

import pytest

from bonito_tasks.config import ConfigRejected, RunConfig, check_config
from bonito_tasks.store import LocalStore
from conftest import TINY_MODEL

pytestmark = pytest.mark.airflow

ENV_SETTINGS = {"hub_repo_id": "org/nightly", "publish_mode": "append", "task_types": ["exqa", "nli"]}


def _context(store_root, run_type="manual", xcom=None, **params):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    params = {"source": "/docs", "store": str(store_root), "model_id": str(TINY_MODEL), **params}
    ti = mock.Mock(**{"xcom_pull.return_value": xcom})
    return {"params": params, "dag_run": SimpleNamespace(dag_id="bonito_dataset", run_id="run-1", run_type=run_type),
            "ti": ti, "outlet_events": OutletEventAccessors()}


def _check(settings=ENV_SETTINGS):
    from bonito_airflow.operators import BonitoCheckParamsOperator

    return BonitoCheckParamsOperator(task_id="check_params", schedule_settings=settings)


def _stage():
    """A stage task (any of the pipeline's: they share the base) that stops once it has its runtime."""
    from bonito_airflow.operators import BonitoStageOperator

    class Stage(BonitoStageOperator):
        seen = []

        def run_stage(self, rt, context):
            self.seen.append(rt)
            raise RuntimeError("stop")

    return Stage(task_id="stage")


@pytest.fixture(autouse=True)
def no_variable(monkeypatch):
    monkeypatch.delenv("AIRFLOW_VAR_BONITO_SCHEDULE_CONFIG", raising=False)


def test_a_manual_run_uses_its_params_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_BONITO_SCHEDULE_CONFIG", json.dumps({"n": 3}))
    result = _check().execute(_context(tmp_path, n=2))
    assert result["run_type"] == "manual" and result["settings"] == {}
    expected = RunConfig(source="/docs", store=str(tmp_path), model_id=str(TINY_MODEL), n=2)
    assert result["config_sha256"] == expected.sha256()


def test_a_scheduled_run_layers_env_settings_then_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_BONITO_SCHEDULE_CONFIG", json.dumps({"task_types": ["ynqa"], "min_rows": 5}))
    result = _check().execute(_context(tmp_path, "scheduled", n=2))
    assert result["run_type"] == "scheduled"
    assert result["settings"] == {"hub_repo_id": "org/nightly", "publish_mode": "append", "task_types": ["ynqa"],
                                  "min_rows": 5}
    config = RunConfig(source="/docs", store=str(tmp_path), model_id=str(TINY_MODEL), n=2, **result["settings"])
    assert result["config_sha256"] == config.sha256()


def test_later_tasks_of_a_scheduled_run_take_the_settings_check_params_resolved(tmp_path, monkeypatch):
    """The stage operators read check_params' XCom, not the Variable: one run, one set of settings."""
    monkeypatch.setenv("AIRFLOW_VAR_BONITO_SCHEDULE_CONFIG", json.dumps({"n": 4}))  # changed since check_params
    resolved = {"run_type": "scheduled", "settings": ENV_SETTINGS, "config_sha256": "x"}
    op = _stage()
    context = _context(tmp_path, "scheduled", xcom=resolved)
    with pytest.raises(RuntimeError, match="stop"):
        op.execute(context)
    config = op.seen[-1].config
    assert (config.hub_repo_id, config.publish_mode, config.task_types, config.n) == (
        "org/nightly", "append", ["exqa", "nli"], 1)
    context["ti"].xcom_pull.assert_called_once_with(task_ids="check_params")

    # A manual run never reads it.
    context = _context(tmp_path, "manual", xcom=resolved)
    with pytest.raises(RuntimeError):
        op.execute(context)
    assert op.seen[-1].config.hub_repo_id is None and not context["ti"].xcom_pull.called


def test_a_scheduled_task_without_resolved_settings_fails_without_retries(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="check_params did not succeed"):
        _stage().execute(_context(tmp_path, "scheduled", xcom=None))


@pytest.mark.parametrize(("variable", "message"), [
    ("{not json", "Variable bonito_schedule_config is not valid JSON"),
    ('["exqa"]', "must be a JSON object"),
    ('{"publish_mod": "append"}', "unknown field 'publish_mod' \\(did you mean 'publish_mode'\\?\\)"),
    ('{"n": 0}', "n=0: Input should be greater than or equal to 1"),
])
def test_a_bad_variable_fails_the_scheduled_run_first_and_names_the_field(tmp_path, monkeypatch, variable, message):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_VAR_BONITO_SCHEDULE_CONFIG", variable)
    with pytest.raises(AirflowFailException, match=message):
        _check().execute(_context(tmp_path, "scheduled"))


@pytest.mark.parametrize(("params", "lines"), [
    # The examples: values the form accepts, RunConfig rejects.
    ({"max_tokens": 1000}, ["params in conflict: max_tokens=1000, max_model_len=2048: max_tokens (1000) leaves no "
                            "room for a chunk"]),
    ({"chunk_overlap_tokens": 600}, ["params in conflict: chunk_overlap_tokens=600, chunk_max_tokens=736: "
                                     "chunk_overlap_tokens (600) must be under half of chunk_max_tokens (736)"]),
    ({"chunk_max_tokens": 2000}, ["params in conflict: chunk_max_tokens=2000, max_tokens=256, max_model_len=2048: "
                                  "chunk_max_tokens (2000) + prompt (32) + max_tokens (256) = 2288 exceeds "
                                  "max_model_len (2048)"]),
    ({"source": "  ", "n": 17}, ["source='  ': Value error, source is empty",
                                 "n=17: Input should be less than or equal to 16"]),
])
def test_rejected_params_fail_check_params_without_retries_naming_each_param(tmp_path, params, lines):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as failed:
        _check().execute(_context(tmp_path, **params))
    message = str(failed.value)
    assert message.startswith(f"params rejected ({len(lines)} problem(s)):")
    for line in lines:
        assert f"\n  {line}" in message
    assert isinstance(failed.value.__cause__, ConfigRejected)


def test_every_task_logs_the_run_folder(tmp_path, capsys):
    """The folder is the run id sanitised to one path segment: what the summary prints, too. Stage
    tasks log it from their runtime, check_params and approve (which touch no store) from the config."""
    from bonito_airflow.approval import BonitoApprovalOperator

    context = _context(tmp_path)
    context["dag_run"].run_id = "manual__2026-11-28T19:28:29.682375+00:00"
    folder = LocalStore(tmp_path).uri("bonito_dataset/manual__2026-11-28T19_28_29.682375_00_00")
    with pytest.raises(RuntimeError):
        _stage().execute(context)
    assert f"run folder: {folder}" in capsys.readouterr().out  # Airflow's task log (structlog)
    _check().execute(context)
    assert f"run folder: {folder}" in capsys.readouterr().out
    BonitoApprovalOperator(task_id="approve", examples={}).execute(context)
    assert f"run folder: {folder}" in capsys.readouterr().out


def test_the_run_folder_of_an_s3_store_needs_no_connection():
    from bonito_airflow.runtime import run_folder

    config = RunConfig(source="/docs", store="s3://bucket/prefix/", model_id=str(TINY_MODEL))
    assert run_folder(config, "bonito_dataset", "scheduled__2026-01-01T02:00:00+00:00") == (
        "s3://bucket/prefix/bonito_dataset/scheduled__2026-01-01T02_00_00_00_00")


def test_check_config_is_runconfig_with_readable_errors():
    assert check_config({"source": "/d", "store": "/s"}) == RunConfig(source="/d", store="/s")
    with pytest.raises(ConfigRejected, match="temprature=0.3: Extra inputs are not permitted"):
        check_config({"source": "/d", "store": "/s", "temprature": 0.3})
