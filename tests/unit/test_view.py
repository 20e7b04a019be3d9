"""The Dataset view on Airflow's real api-server app (create_app: the plugin mounted as Airflow mounts
it, SimpleAuthManager with login on, the SQLite metadata DB), over a store a failed validate really
wrote: authentication (401/403), the run page (cause, expectations, quarantine, plots, samples with
the answer span), paging, files inside and outside the run folder, and the readable pages for a
missing run, a run in progress, an unreachable store and a manifest of an older version."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DROPPED_GENERATIONS, EXAMPLES, ChunkMetrics, GenerateMetrics, RunRef
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore, open_store, run_prefix

pytestmark = [pytest.mark.airflow]

DAG_ID = "bonito_dataset"
PASSWORD = "view-test-password"
CONTEXT = "The lease runs for twelve months. The tenant pays rent of 900 euros on the first day of each month."


def _row(i: int, good: bool) -> dict:
    return {"example_id": f"ex-{i:04d}", "task_type": "exqa" if i % 2 else "ynqa",
            "input": f"{CONTEXT}\nQuestion {i}: how long does the lease run?" if i % 2
            else f"{CONTEXT}\nIs rent due in month {i}?",
            "output": ("twelve months" if good else "forty years") if i % 2 else ("Yes." if good else "Perhaps."),
            "doc_id": "doc-0", "chunk_id": "chunk-0", "char_start": 0, "char_end": len(CONTEXT), "sample_index": 0,
            "model_id": "m", "model_revision": "r", "sampling_params": "{}", "run_id": "r"}


def failed_validate_run(store, run: RunRef, tmp_path) -> None:
    """chunk + one generate shard (60 examples, 10 of them bad, 3 dropped) + a validate that fails its
    pass-rate threshold, run for real: the failure record, quarantine part, report and Data Docs."""
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import CHUNKS
    from bonito_tasks.validate import ValidationFailed, validate

    chunk = StageWriter(store, run, "chunk")
    chunk.begin()
    chunk.add("chunks", pa.Table.from_pylist([{"chunk_id": "chunk-0", "doc_id": "doc-0", "chunk_index": 0,
                                                "char_start": 0, "char_end": len(CONTEXT), "n_tokens": 25,
                                                "text": CONTEXT, "page": None, "also_in": []}], CHUNKS))
    chunks = chunk.commit(metrics=ChunkMetrics(chunks=1, shards=1))
    shard = StageWriter(store, run, "generate", partition=0)
    shard.begin()
    shard.add("examples", pa.Table.from_pylist([_row(i, good=i >= 10) for i in range(60)], EXAMPLES))
    shard.add("dropped_generations", pa.Table.from_pylist(
        [{"chunk_id": "chunk-0", "task_type": "exqa", "sample_index": i, "reason": "no_pipe",
          "generated_text": f"garbled {i}"} for i in range(3)], DROPPED_GENERATIONS))
    generated = shard.commit(metrics=GenerateMetrics(prompts=63, parse_failures={"no_pipe": 3}))
    config = RunConfig(source=str(tmp_path), store=store.root_uri, task_types=["exqa", "ynqa"], min_pass_rate=0.99,
                       max_duplicate_rate=1.0, max_label_share=1.0)
    with pytest.raises(ValidationFailed):
        validate(store, run, config, [generated], chunks=chunks)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Airflow's api-server app with this repo's plugin, login on (users admin and viewer)."""
    from bonito_dev.local import setup_db

    setup_db()
    home = tmp_path_factory.mktemp("auth")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD, "viewer": PASSWORD}))
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex, "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        answer = client.post("/auth/token", json={"username": "admin", "password": PASSWORD})
        answer.raise_for_status()
        client.token = answer.json()["access_token"]
        yield client
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def add_run(conf: dict, state: str = "failed") -> RunRef:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    run_id = f"manual__{datetime.now(UTC).isoformat()}_{uuid.uuid4().hex[:6]}"
    with create_session() as session:
        session.add(DagRun(dag_id=DAG_ID, run_id=run_id, run_type="manual", state=state, conf=conf,
                           run_after=datetime.now(UTC), start_date=datetime.now(UTC)))
    return RunRef(dag_id=DAG_ID, run_id=run_id)


def view(api, run: RunRef, path: str = "", **kwargs):
    from bonito_airflow.view.urls import run_path

    headers = {"Authorization": f"Bearer {api.token}"} | kwargs.pop("headers", {})
    return api.get(run_path(run.dag_id, run.run_id) + path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def failed_run(api, tmp_path_factory):
    root = tmp_path_factory.mktemp("view-store")
    store = LocalStore(root / "store")
    run = add_run({"store": str(root / "store"), "source": str(root)})
    failed_validate_run(store, run, root)
    return store, run


def test_the_plugin_registers_the_view_and_its_tabs(api):
    answer = api.get("/api/v2/plugins", headers={"Authorization": f"Bearer {api.token}"}).json()
    (plugin,) = [p for p in answer["plugins"] if p["name"] == "bonito_etl"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/bonito"]
    views = {v["destination"]: v["href"] for v in plugin["external_views"]}
    assert views == {"dag_run": "/bonito/dags/{DAG_ID}/runs/{RUN_ID}",
                     "task_instance": "/bonito/dags/{DAG_ID}/runs/{RUN_ID}/tasks/{TASK_ID}"}
    links = " ".join(plugin["operator_extra_links"])
    assert all(name in links for name in ("QualityReportLink", "DataDocsLink", "DatasetViewLink")), links


def test_requires_a_signed_in_user_allowed_to_read_the_dag(api, failed_run, monkeypatch):
    _, run = failed_run
    anonymous = view(api, run, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and "Sign in" in anonymous.text and "Traceback" not in anonymous.text
    assert view(api, run, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    for path in ("/rows/quarantine", "/files/validate/report/quality.html", "/summary.json"):
        assert view(api, run, path, headers={"Authorization": ""}).status_code == 401, path

    # A signed-in user whom the auth manager does not allow to read this DAG's runs.
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    monkeypatch.setattr(type(manager), "is_authorized_dag", lambda self, **kw: kw["details"].id != DAG_ID)
    denied = view(api, run)
    assert denied.status_code == 403 and "may not read" in denied.text


def test_the_cookie_of_the_ui_session_is_enough(api, failed_run):
    _, run = failed_run
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    from bonito_airflow.view.urls import run_path

    api.cookies.set(COOKIE_NAME_JWT_TOKEN, api.token)
    try:
        assert api.get(run_path(run.dag_id, run.run_id)).status_code == 200
    finally:
        api.cookies.clear()


def test_failed_validate_page_shows_cause_quarantine_and_report(api, failed_run):
    store, run = failed_run
    page = view(api, run)
    assert page.status_code == 200, page.text
    html = page.text
    # The cause first: the failed expectation with its observed value against its threshold.
    cause = html.split('id="cause"', 1)[1].split('id="summary"', 1)[0]
    assert "validate failed: ValidationFailed" in cause and "min_pass_rate" in cause
    assert "0.8333" in cause and "min_value=0.99" in cause
    assert "exqa_answer_in_context</a> 5" in cause and "ynqa_label</a> 5" in cause  # quarantine counts
    assert "An example quarantined row" in cause and "Perhaps." in cause
    assert "/runbook" in cause
    # The quality report's plots (matplotlib SVG), links to Data Docs and the report.
    assert "validate/report/output_tokens.svg" in html and "Data Docs" in html and "Quality report" in html
    # Samples per task type, with the exqa answer span marked in the input.
    samples = html.split('id="samples"', 1)[1].split('id="quarantine"', 1)[0]
    assert "Generated examples (not validated)" in samples
    assert "<h3>exqa" in samples and "<h3>ynqa" in samples and "forty years" in samples
    good = view(api, run, "/rows/examples", params={"value": "exqa", "offset": 5, "limit": 1}).text
    assert '<mark title="answer span">twelve months</mark>' in good  # the answer, marked in the passage
    dropped = html.split('id="dropped"', 1)[1].split('id="rejects"', 1)[0]
    assert "no_pipe" in dropped and "garbled 0" in dropped
    # Nothing secret or absolute beyond the store URI the params name.
    assert "Traceback" not in html


def test_rows_are_paged_and_filtered(api, failed_run):
    _, run = failed_run
    first = view(api, run, "/rows/examples", params={"limit": 25})
    assert first.status_code == 200 and "Rows 1–25 of 60" in first.text and "offset=25" in first.text
    last = view(api, run, "/rows/examples", params={"offset": 50, "limit": 25})
    assert "Rows 51–60 of 60" in last.text and "next</a>" not in last.text
    exqa = view(api, run, "/rows/examples", params={"value": "exqa", "limit": 100})
    assert "of 30" in exqa.text and "ynqa</td>" not in exqa.text
    quarantine = view(api, run, "/rows/quarantine", params={"value": "exqa_answer_in_context"})
    assert quarantine.status_code == 200 and "of 5" in quarantine.text and "forty years" in quarantine.text
    assert view(api, run, "/rows/documents").status_code == 404  # not a table the view pages


def test_files_inside_the_run_folder_only(api, failed_run, tmp_path):
    store, run = failed_run
    report = view(api, run, "/files/validate/report/quality.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "sandbox" in report.headers["content-security-policy"]
    docs = view(api, run, "/files/validate/data_docs/index.html")
    assert docs.status_code == 200
    svg = view(api, run, "/files/validate/report/labels.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")

    secret = tmp_path / "secret.html"
    secret.write_text("secret")
    (store.root / run_prefix(run) / "escape.html").symlink_to(secret)
    for path in ("/files/%2e%2e/%2e%2e/secret.html", "/files/..%2F..%2Fsecret.html", "/files/validate/../../x.html",
                 "/files/%2Fetc%2Fpasswd.html", "/files/escape.html", "/files/generate/shard-00000/"
                 "part-00000.examples.parquet"):
        answer = view(api, run, path)
        assert answer.status_code in (403, 404), (path, answer.status_code)
        assert "secret" not in answer.text.replace("secret.html", ""), path
    assert view(api, run, "/files/validate/nothing.html").status_code == 404


def test_summary_json_names_the_failed_stage_and_its_cause(api, failed_run):
    _, run = failed_run
    summary = view(api, run, "/summary.json").json()
    assert summary["failed_stage"] == "validate" and summary["stages"]["validate"] == "failed (ValidationFailed)"
    (failed,) = summary["cause"]["failed_expectations"]
    assert failed["name"] == "min_pass_rate" and failed["bound"]["min_value"] == 0.99
    assert summary["cause"]["quarantined"]["exqa_answer_in_context"] == 5


def test_readable_pages_for_bad_input(api, tmp_path, s3_bucket, monkeypatch):
    missing = view(api, RunRef(dag_id=DAG_ID, run_id="manual__no-such-run"))
    assert missing.status_code == 404 and "has no run" in missing.text and "Traceback" not in missing.text

    running = add_run({"store": str(tmp_path / "store"), "source": str(tmp_path)}, state="running")
    page = view(api, running)
    assert page.status_code == 200 and "still running" in page.text and 'http-equiv="refresh"' in page.text
    assert "not committed" in page.text and "No examples yet" in page.text

    bucket, kwargs = s3_bucket
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": kwargs["aws_access_key_id"], "password": "testing",
        "extra": {"endpoint_url": kwargs["endpoint_url"], "region_name": "us-east-1"}}))
    gone = add_run({"store": f"s3://{bucket}-missing/store", "source": str(tmp_path)})
    page = view(api, gone)
    assert page.status_code == 502 and "Store unreachable" in page.text and "Traceback" not in page.text
    assert "testing" not in page.text.replace(bucket, "")  # no credential in the message

    old = add_run({"store": str(tmp_path / "old"), "source": str(tmp_path)})
    store = open_store(str(tmp_path / "old"))
    store.write_bytes(f"{run_prefix(old)}/extract/_manifest.json", json.dumps({
        "schema_version": 0, "stage": "extract", "uri": "x", "counts": {"documents": 3},
        "metrics": {"stage": "extract", "docs": 3}}).encode())
    page = view(api, old)
    assert page.status_code == 200 and "Written by another version" in page.text
    assert "schema version 0" in page.text and "documents=3" in page.text


def test_a_store_on_s3_pages_with_ranged_reads(api, tmp_path, s3_bucket, monkeypatch):
    bucket, kwargs = s3_bucket
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": kwargs["endpoint_url"], "region_name": "us-east-1"}}))
    run = add_run({"store": f"s3://{bucket}/store", "source": str(tmp_path)})
    store = open_store(f"s3://{bucket}/store", **kwargs)
    failed_validate_run(store, run, tmp_path)
    page = view(api, run)
    assert page.status_code == 200 and "min_pass_rate" in page.text, page.text[:2000]
    rows = view(api, run, "/rows/quarantine", params={"limit": 2, "offset": 2})
    assert "Rows 3–4 of 10" in rows.text
    assert view(api, run, "/files/validate/report/failures.svg").status_code == 200


def test_the_task_tab_opens_the_tasks_section(api, failed_run):
    _, run = failed_run
    answer = view(api, run, "/tasks/validate", follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"].endswith("#quality")


def test_a_drift_failure_shows_the_comparison_and_its_plot(api, tmp_path, monkeypatch):
    """Compare failed the run (every yes/no answer "yes" against a release of 30 yes, 20 no): the page
    shows the verdict, the failing check and the tonight-vs-baseline plot, and links the drift report."""
    from bonito_tasks.compare import DriftFailed
    from bonito_tasks.contracts import CompareMetrics
    from tests.hub_server import HubServer
    from tests.unit.test_release import compare, quality, release

    store = LocalStore(tmp_path / "store")
    run = add_run({"store": str(tmp_path / "store"), "source": str(tmp_path)})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with HubServer() as hub:
        release(hub, compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard)
        with pytest.raises(DriftFailed):
            compare(store, tmp_path, hub, run.run_id, quality(50, 0))
    page = view(api, run)
    assert page.status_code == 200, page.text
    section = page.text.split('id="drift"', 1)[1].split('id="samples"', 1)[0]
    assert "failure" in section and "run-1" in section and "labels of ynqa" in section
    assert "expect_column_kl_divergence_to_be_less_than" in section
    assert '/files/compare/drift.svg"' in section and "/files/compare/report.html" in page.text
    plot = view(api, run, "/files/compare/drift.svg")
    assert plot.status_code == 200 and plot.headers["content-type"].startswith("image/svg+xml")
    report = view(api, run, "/files/compare/report.html").text
    assert "labels of ynqa" in report and "<img src='drift.svg'" in report
    assert view(api, run, "/tasks/compare", follow_redirects=False).headers["location"].endswith("#drift")


def test_runbook_page_renders_the_tasks_doc(api, monkeypatch):
    from bonito_airflow.view import app as view_app

    monkeypatch.setattr(view_app, "task_runbook", lambda dag_id, task_id: "#### validate\n**Safe to clear:** yes")
    answer = api.get(f"/bonito/dags/{DAG_ID}/tasks/validate/runbook",
                     headers={"Authorization": f"Bearer {api.token}"})
    assert answer.status_code == 200 and "<strong>Safe to clear:</strong> yes" in answer.text


def test_previews_trust_recorded_counts_only_where_they_cover_every_row():
    from bonito_airflow.view.app import _recorded_counts
    from bonito_tasks.contracts import GenerateSummary, RunSummary

    def summary(committed: int, by_reason: dict) -> RunSummary:
        return RunSummary(dag_id=DAG_ID, run_id="r", run_folder="/s/r", stages={}, generated=GenerateSummary(
            shards=2, shards_committed=committed, dropped_generations=5, dropped_by_reason=by_reason))

    assert _recorded_counts(summary(2, {"no_pipe": 3, "extra_pipe": 2}), "dropped_generations") == {
        "no_pipe": 3, "extra_pipe": 2}
    assert _recorded_counts(summary(1, {"no_pipe": 3, "extra_pipe": 2}), "dropped_generations") is None
    assert _recorded_counts(summary(2, {}), "dropped_generations") is None  # an older version's metrics
    assert _recorded_counts(summary(2, {"no_pipe": 5}), "quarantine") is None
    assert _recorded_counts(None, "rejects") is None
