"""bonito_dataset on a real Airflow deployment (conftest.py): the scheduler, not dag.test(), runs it.

Tasks are sent by the CeleryExecutor through Redis to a Celery worker that serves queues `default`
and `gpu` (generate's queue), and talk to the api-server's execution API; the REST API is used as
an operator would, with a token of the SimpleAuthManager.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from bonito_tasks.store import safe_segment
from conftest import SAMPLE_DOCS, TINY_MODEL
from deployment.conftest import DAG_ID, HUB_REPO, SCHEDULE_SETTINGS, TASK_TYPES
from deployment.stack import wait_until

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1800)]

NEW_DOC = "mpl-2.0.md"  # left out of the manual run; put in BONITO_SOURCE later, for a scheduled run to find
CONF = {"source": str(SAMPLE_DOCS), "model_id": str(TINY_MODEL), "dtype": "float32", "task_types": TASK_TYPES,
        # The tiny model knows nothing: gate the plumbing, not its answers' quality.
        "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0,
        "full_refresh": True, "hub_repo_id": HUB_REPO, "exclude": [NEW_DOC]}


def test_every_component_reports_healthy(deployment):
    health = deployment.api.call("GET", "/monitor/health")
    assert {part: health[part]["status"] for part in health} == {
        part: "healthy" for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")}
    assert deployment.api.dag(DAG_ID)["timetable_summary"] == "* * * * *"
    # The DAG's docs show the scheduled runs' settings (BONITO_SCHEDULE_CONFIG, checked at parse time).
    doc = deployment.api.call("GET", f"/dags/{DAG_ID}/details")["doc_md"]
    assert json.dumps(SCHEDULE_SETTINGS, sort_keys=True) in doc


def test_manual_and_scheduled_runs_succeed_and_publish(deployment):
    api = deployment.api
    new_doc_id = _add_to_source(deployment, NEW_DOC)
    # Triggered while paused, with a run_after before any cron tick: the scheduler starts queued
    # runs in run_after order, one at a time (max_active_runs=1), so this run goes first and the
    # sweep after it finds SWEEP_DOC in the ledger and only NEW_DOC new (the manual run excludes
    # it). (A sweep that generated SWEEP_DOC would gate the tiny model at the production 90% pass rate.)
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
        # The first scheduled run may have appended already: the manual run's commit is on main, its head or before.
        [head] = [c for c in deployment.hub.repo(HUB_REPO).history() if c.oid == published["hub_commit_sha"]]
        assert any(path.startswith("data/") and path.endswith(".parquet") for path in head.files)
        summary = api.xcom(DAG_ID, run_id, "summarize", key="summary")
        assert summary["published"]["examples"] == published["counts"]["examples"]
        assert summary["generated"]["output_tokens_per_s"] > 0

        _scheduled_runs_append_only_their_new_rows(deployment, head, new_doc_id)
    finally:
        api.set_paused(DAG_ID, True)
    assert not api.runs(DAG_ID, state="failed")


def _add_to_source(deployment, name: str) -> str:
    """Put a sample document into BONITO_SOURCE (moved in whole: a sweep never reads half a file);
    returns its doc_id."""
    data = (SAMPLE_DOCS / name).read_bytes()
    staged = deployment.source.parent / f".{name}.part"
    staged.write_bytes(data)
    staged.rename(deployment.source / name)
    return hashlib.sha256(data).hexdigest()


def _scheduled_runs_append_only_their_new_rows(deployment, manual_head, new_doc_id: str) -> None:
    """The every-minute sweep of BONITO_SOURCE, with the settings of BONITO_SCHEDULE_CONFIG (append
    to HUB_REPO). The ledger knows the manual run's documents; the document added to the source is
    processed by the first scheduled run, which appends only its rows; the run after it finds
    nothing new and publishes nothing."""
    import pyarrow.parquet as pq

    api, hub = deployment.api, deployment.hub

    def scheduled_runs(state: str = "success") -> list[dict]:
        return sorted(api.runs(DAG_ID, run_type="scheduled", state=state), key=lambda r: r["run_after"])

    def publish_state(run: dict) -> str | None:
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run["dag_run_id"])}
        return states.get("publish")

    def none_failed() -> None:
        for run in scheduled_runs("failed"):
            raise AssertionError(f"scheduled run {run['dag_run_id']} failed\n"
                                 f"{api.failure_report(DAG_ID, run['dag_run_id'])}\n{deployment.details()}")

    def appending_run():
        none_failed()
        return next((r for r in scheduled_runs() if publish_state(r) == "success"), None)

    details = deployment.details
    appended = wait_until(appending_run, 600, "a scheduled run to publish the new document", interval=5,
                          details=details)
    run_id = appended["dag_run_id"]
    assert appended["conf"] in ({}, None)  # nothing from a form: the settings are the schedule's own
    resolved = api.xcom(DAG_ID, run_id, "check_params")
    assert resolved["run_type"] == "scheduled" and resolved["settings"] == SCHEDULE_SETTINGS

    published = api.xcom(DAG_ID, run_id, "publish")
    head = hub.repo(HUB_REPO).resolve("main")
    assert published["hub_commit_sha"] == head.oid and manual_head.oid in {c.oid for c in hub.repo(HUB_REPO).history()}
    added = published["counts"]["examples_added"]
    assert added > 0
    # Append: the manual run's files are untouched; the new shards hold this run's rows, all of them
    # from the new document, as many as it says it added.
    assert all(head.files.get(path) == blob for path, blob in manual_head.files.items() if path.startswith("data/"))
    new_shards = [path for path in head.files
                  if path.startswith("data/") and path.endswith(".parquet") and path not in manual_head.files]
    assert new_shards and all(f"/train-{safe_segment(run_id)}-" in path for path in new_shards), new_shards
    rows = [row for path in new_shards for row in pq.read_table(io.BytesIO(head.files[path])).to_pylist()]
    assert len(rows) == added
    assert {row["doc_id"] for row in rows} == {new_doc_id} and {row["run_id"] for row in rows} == {run_id}

    # A later scheduled run: no new document, so nothing is generated or published; the Hub keeps its head.
    later = wait_until(lambda: none_failed() or [r for r in scheduled_runs() if r["run_after"] > appended["run_after"]],
                       300, "a second scheduled run to succeed", interval=5, details=details)[0]
    if (state := publish_state(later)) == "success":
        assert api.xcom(DAG_ID, later["dag_run_id"], "publish")["counts"]["examples_added"] == 0
    else:
        assert state == "skipped", api.failure_report(DAG_ID, later["dag_run_id"])
    assert hub.repo(HUB_REPO).resolve("main").oid == head.oid
    (deployment.source / NEW_DOC).unlink()  # the UI test's runs sweep the first document only


def test_a_failed_task_alerts_the_webhook(deployment):
    """A run whose source holds nothing readable: collect_documents (the extract partitions put
    together) fails for good on the Celery worker, its failure callback posts the alert, and
    summarize marks the run failed without a second alert."""
    api = deployment.api
    conf = CONF | {"source": str(SAMPLE_DOCS / "broken.pdf")}
    run_id = api.trigger(DAG_ID, conf, run_after="2026-01-02T00:00:00Z")  # a new run id, before any sweep
    api.set_paused(DAG_ID, False)
    try:
        api.wait_for_run(DAG_ID, run_id, timeout=600, details=deployment.details, expect="failed")
    finally:
        api.set_paused(DAG_ID, True)
    alerts = [a for a in deployment.alerts.alerts() if a["run_id"] == run_id]
    assert [(a["alert"], a["task_id"]) for a in alerts] == [("task_failed", "collect_documents")]
    assert "no document could be extracted" in alerts[0]["message"]
    assert alerts[0]["log_url"].startswith(f"{deployment.url}/dags/{DAG_ID}/runs/")
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    assert states["extract"] == "success"  # a partition whose files are all rejected is not a failure
    assert states["collect_documents"] == "failed" and states["summarize"] == "failed"
