"""Alerts: the JSON log line and the webhook POST (to a real HTTP server on loopback). The task
instance is a small stand-in with the attributes an Airflow task's context provides; the whole
path through a real task failure runs in tests/e2e/test_dag.py."""

import json
import logging
import time
from types import SimpleNamespace

import pytest

from bonito_airflow.alerts import Deadline, emit_alert, on_task_failure

pytestmark = pytest.mark.airflow


def _context(map_index=-1):
    ti = SimpleNamespace(dag_id="bonito_dataset", run_id="scheduled__2026-11-25T02:00:00+00:00", task_id="generate",
                         map_index=map_index, try_number=3, log_url="http://airflow/dags/bonito_dataset/runs/x/tasks/generate")
    return {"ti": ti, "task": SimpleNamespace(doc_md="\n#### generate (one task per chunk shard)\nRuns Bonito...")}


def _logged_alerts(caplog):
    return [json.loads(r.getMessage().removeprefix("BONITO_ALERT ")) for r in caplog.records
            if r.name == "bonito.alert" and r.getMessage().startswith("BONITO_ALERT ")]


def test_failure_alert_is_logged_and_posted(alert_webhook, caplog):
    caplog.set_level(logging.INFO, logger="bonito.alert")
    context = _context(map_index=4) | {"exception": RuntimeError("engine died: CUDA error")}

    on_task_failure(context)

    (posted,) = alert_webhook.alerts("task_failed")
    assert (posted["dag_id"], posted["task_id"], posted["map_index"], posted["try_number"]) == (
        "bonito_dataset", "generate", 4, 3)
    assert posted["message"] == "RuntimeError: engine died: CUDA error"
    assert posted["runbook"] == "generate (one task per chunk shard)"
    # Links to the runbook (the task's doc_md, served by the plugin) and to the run's Dataset view.
    assert posted["runbook_url"].endswith("/bonito/dags/bonito_dataset/tasks/generate/runbook")
    assert posted["dataset_view"].endswith("/bonito/dags/bonito_dataset/runs/scheduled__2026-11-25T02%3A00%3A00"
                                           "%2B00%3A00#cause")
    assert posted["runbook_url"] in posted["text"] and posted["dataset_view"] in posted["text"]
    assert posted["log_url"].endswith("/tasks/generate")
    assert posted["text"].startswith(":rotating_light: task_failed: bonito_dataset.generate[4] run scheduled__")
    assert _logged_alerts(caplog) == [posted]
    assert alert_webhook.url not in caplog.text  # the webhook URL is a secret


def test_known_secrets_are_masked(alert_webhook):
    from airflow.sdk.log import mask_secret

    mask_secret("hf_s3cr3tT0kenValue")
    posted = emit_alert("task_failed", _context(), "401 for token hf_s3cr3tT0kenValue")
    assert "hf_s3cr3tT0kenValue" not in json.dumps(posted)
    assert "hf_s3cr3tT0kenValue" not in json.dumps(alert_webhook.alerts())


def test_undeliverable_alert_is_still_logged(alert_webhook, caplog):
    caplog.set_level(logging.INFO, logger="bonito.alert")
    alert_webhook.status = 500
    emit_alert("task_failed", _context(), "boom")  # must not raise
    assert len(alert_webhook.alerts()) == 1 and len(_logged_alerts(caplog)) == 1
    assert "alert webhook delivery failed: HTTPStatusError" in caplog.text


def test_without_connection_alerts_are_only_logged(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bonito.alert")
    monkeypatch.delenv("AIRFLOW_CONN_BONITO_ALERTS", raising=False)
    emit_alert("task_failed", _context(), "boom")
    assert [a["message"] for a in _logged_alerts(caplog)] == ["boom"]
    assert "delivery failed" not in caplog.text


def test_deadline_fires_once_when_the_work_overruns(alert_webhook):
    with Deadline(_context(), "generate shard 0", budget_s=0.05) as deadline:
        alert = alert_webhook.wait_for("deadline_missed", timeout_s=5)
    assert deadline.fired
    assert alert["message"].startswith("generate shard 0 has run longer than its budget")
    assert alert["budget_s"] == 0.05
    assert len(alert_webhook.alerts()) == 1


def test_deadline_is_silent_when_the_work_ends_in_time(alert_webhook):
    with Deadline(_context(), "generate shard 0", budget_s=0.3) as deadline:
        pass
    time.sleep(0.5)
    assert not deadline.fired and alert_webhook.alerts() == []
