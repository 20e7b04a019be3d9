"""bonito_dataset on a real Airflow deployment (conftest.py): the scheduler, not dag.test(), runs it.

Tasks are sent by the CeleryExecutor through Redis to a Celery worker that serves queues `default`
and `gpu` (generate's queue), and talk to the api-server's execution API; the REST API is used as
an operator would, with a token of the SimpleAuthManager.
"""

from __future__ import annotations

import pytest

from conftest import SAMPLE_DOCS, TINY_MODEL
from deployment.conftest import DAG_ID
from deployment.stack import wait_until

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1500)]

HUB_REPO = "bonito-test/deploy"
CONF = {"source": str(SAMPLE_DOCS), "model_id": str(TINY_MODEL), "dtype": "float32", "task_types": ["exqa"],
        # The tiny model knows nothing: gate the plumbing, not its answers' quality.
        "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0,
        "full_refresh": True, "hub_repo_id": HUB_REPO}


def test_every_component_reports_healthy(deployment):
    health = deployment.api.call("GET", "/monitor/health")
    assert {part: health[part]["status"] for part in health} == {
        part: "healthy" for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")}
    assert deployment.api.dag(DAG_ID)["timetable_summary"] == "* * * * *"


def test_manual_and_scheduled_runs_succeed_and_publish(deployment):
    api = deployment.api
    # Triggered while paused, with a run_after before any cron tick: the scheduler starts queued
    # runs in run_after order, so this run goes first and the sweep finds its document in the
    # ledger. (A sweep that generated would gate the tiny model at the production 90% pass rate.)
    run_id = api.trigger(DAG_ID, CONF, run_after="2026-01-01T00:00:00Z")
    api.set_paused(DAG_ID, False)
    try:
        api.wait_for_run(DAG_ID, run_id, timeout=900, details=deployment.details)

        tis = {ti["task_id"]: ti for ti in api.task_instances(DAG_ID, run_id)}
        assert tis["generate"]["queue"] == "gpu" and tis["generate"]["pool"] == "gpu"
        worker_log = deployment.services.tail("celery-worker", lines=100_000)
        assert "Executing workload in Celery" in worker_log and "task_id=generate/" in worker_log

        published = api.xcom(DAG_ID, run_id, "publish")
        assert published["hub_url"] == f"{deployment.hub.url}/datasets/{HUB_REPO}"
        assert published["counts"]["examples"] > 0
        head = deployment.hub.repo(HUB_REPO).resolve("main")
        assert head.oid == published["hub_commit_sha"]
        assert any(path.startswith("data/") and path.endswith(".parquet") for path in head.files)
        summary = api.xcom(DAG_ID, run_id, "summarize", key="summary")
        assert summary["published"]["examples"] == published["counts"]["examples"]
        assert summary["generated"]["output_tokens_per_s"] > 0

        # The every-minute sweep of BONITO_SOURCE (max_active_runs=1: it waited for the manual
        # run). The ledger knows its document, so chunk and everything after it skip.
        scheduled = wait_until(lambda: api.runs(DAG_ID, run_type="scheduled", state="success"), 300,
                               "a scheduled run to succeed", interval=5,
                               details=lambda: f"{api.runs(DAG_ID)}\n{deployment.details()}")[0]
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, scheduled["dag_run_id"])}
        assert states["extract"] == "success" and states["chunk"] == "skipped", states
    finally:
        api.set_paused(DAG_ID, True)
    assert not api.runs(DAG_ID, state="failed")


def test_a_failed_task_alerts_the_webhook(deployment):
    """A run whose source holds nothing readable: extract fails for good on the Celery worker, its
    failure callback posts the alert, and summarize marks the run failed without a second alert."""
    api = deployment.api
    conf = CONF | {"source": str(SAMPLE_DOCS / "broken.pdf")}
    run_id = api.trigger(DAG_ID, conf, run_after="2026-01-02T00:00:00Z")  # a new run id, before any sweep
    api.set_paused(DAG_ID, False)
    try:
        api.wait_for_run(DAG_ID, run_id, timeout=600, details=deployment.details, expect="failed")
    finally:
        api.set_paused(DAG_ID, True)
    alerts = [a for a in deployment.alerts.alerts() if a["run_id"] == run_id]
    assert [(a["alert"], a["task_id"]) for a in alerts] == [("task_failed", "extract")]
    assert "no document could be extracted" in alerts[0]["message"]
    assert alerts[0]["log_url"].startswith(f"{deployment.url}/dags/{DAG_ID}/runs/")
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    assert states["extract"] == "failed" and states["summarize"] == "failed"
