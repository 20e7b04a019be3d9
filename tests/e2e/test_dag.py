"""The whole DAG, run for real with dag.test() on the bundled samples and the tiny model."""

import json
from pathlib import Path

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import open_store, safe_segment
from conftest import SAMPLE_DOCS, TINY_MODEL

pytestmark = [pytest.mark.airflow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def dag():
    from bonito_dev.local import load_dag, setup_db

    setup_db()
    return load_dag("bonito_dataset")


def test_dagbag_has_no_import_errors(dag):
    # load_dag raises on any import error in the dags folder.
    assert [t.task_id for t in dag.topological_sort()] == [
        "check_params", "plan", "extract", "collect_documents", "chunk", "plan_shards", "generate",
        "validate_shard", "validate", "compare", "approve", "publish", "update_ledger", "summarize"]
    runbooks = Path(dag.fileloc).parent / "runbooks"
    assert sorted(p.stem for p in runbooks.glob("*.md")) == sorted(dag.task_ids)
    for t in dag.tasks:
        assert t.retries >= 1 and t.retry_exponential_backoff
        # A runbook, from dags/runbooks/<task_id>.md: first whether it is safe to clear, then what the
        # task does, its common failures and where its artifacts are.
        assert t.doc_md == (runbooks / f"{t.task_id}.md").read_text(encoding="utf-8"), t.task_id
        heading, safe_to_clear = t.doc_md.splitlines()[:2]
        assert heading.startswith(f"#### {t.task_id}") and safe_to_clear.startswith("**Safe to clear:** "), t.task_id
        assert "**Common failures:**" in t.doc_md and "**Artifacts:**" in t.doc_md, t.task_id
    assert len(dag.doc_md) < 1200  # the DAG's own doc stays an overview; the runbooks are per task
    assert all(t.on_failure_callback for t in dag.tasks if t.task_id != "summarize")


def _asset_events(run_id: str) -> dict[str, list[dict]]:
    """The asset events the run emitted, by asset URI, as stored in the metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(AssetModel.uri, AssetEvent.extra).join(AssetEvent.asset)
                               .where(AssetEvent.source_run_id == run_id)).all()
    events: dict[str, list[dict]] = {}
    for uri, extra in rows:
        events.setdefault(uri, []).append(extra)
    return events


def test_full_run_publishes_dataset_with_lineage(dag, tmp_path, alert_webhook):
    import datasets

    store_root = tmp_path / "store"
    conf = {"source": str(SAMPLE_DOCS), "store": str(store_root), "model_id": str(TINY_MODEL),
            "dtype": "float32", "task_types": ["exqa", "ynqa"], "chunk_shard_size": 20,
            # The tiny model knows nothing: gate the plumbing, not its answers' quality.
            "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0,
            "generate_budget_minutes": 0.0001}  # 6 ms: every generate task overruns its budget
    dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "success"

    # Each generate task raised a deadline alert and went on; nothing failed.
    deadline_alerts = alert_webhook.alerts("deadline_missed")
    assert {a["task_id"] for a in deadline_alerts} == {"generate"} and not alert_webhook.alerts("task_failed")

    store = open_store(str(store_root))
    run = RunRef(dag_id="bonito_dataset", run_id=dag_run.run_id)
    documents, chunks, published = (StageWriter(store, run, s).committed() for s in ("extract", "chunk", "publish"))
    assert documents.metrics.rejects >= 1  # the bundled broken file, recorded and skipped

    dataset = datasets.load_dataset(published.metrics.dataset_uri, split="train")
    assert dataset.num_rows == published.metrics.examples > 0
    chunk_rows = {r["chunk_id"]: r for r in store.read_table(chunks, "chunks").to_pylist()}
    doc_ids = set(store.read_table(documents, "documents")["doc_id"].to_pylist())
    for row in dataset:
        chunk = chunk_rows[row["chunk_id"]]
        assert row["doc_id"] == chunk["doc_id"] and row["doc_id"] in doc_ids
        assert (row["char_start"], row["char_end"]) == (chunk["char_start"], chunk["char_end"])
        assert row["run_id"] == dag_run.run_id and row["task_type"] in ("exqa", "ynqa")
    assert len(deadline_alerts) == chunks.metrics.shards

    # Lineage: one event per stage output (one per generate shard), each naming its manifest.
    events = _asset_events(dag_run.run_id)
    stage_assets = {f"bonito://bonito_dataset/{t}": stage for t, stage in [
        ("documents", "extract"), ("chunks", "chunk"), ("generations", "generate"), ("examples", "validate"),
        ("dataset", "publish")]}
    assert set(events) == set(stage_assets)
    assert len(events["bonito://bonito_dataset/generations"]) == chunks.metrics.shards
    for uri, stage in stage_assets.items():
        for extra in events[uri]:
            assert extra["run_id"] == dag_run.run_id and f"/{stage}/" in extra["manifest"]
    assert events["bonito://bonito_dataset/dataset"][0]["dataset_uri"] == published.metrics.dataset_uri

    # The last task summarises the run from its manifests.
    summary = json.loads(store.read_bytes(f"bonito_dataset/{safe_segment(dag_run.run_id)}/summary.json"))
    shards = chunks.metrics.shards
    assert set(summary["stages"].values()) == {"committed", f"{shards}/{shards} shards committed"}
    assert summary["published"]["examples"] == dataset.num_rows
    assert summary["generated"]["examples"] >= summary["validated"]["passed"] == dataset.num_rows
    assert summary["generated"]["output_tokens_per_s"] > 0 and summary["generated"]["gpu_hours"] > 0


def test_run_failing_at_extract_alerts_once_and_is_summarised(dag, tmp_path, alert_webhook):
    import shutil

    source = tmp_path / "docs"
    source.mkdir()
    shutil.copy(SAMPLE_DOCS / "broken.pdf", source)
    conf = {"source": str(source), "store": str(tmp_path / "store"), "model_id": str(TINY_MODEL)}
    dag_run = dag.test(run_conf=conf)

    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["extract"] == "success"  # a partition whose files are all rejected is not a failure
    assert states["collect_documents"] == "failed" and states["summarize"] == "failed"
    (alert,) = alert_webhook.alerts()  # failed without retries; summarize sends no second alert
    assert (alert["alert"], alert["task_id"], alert["try_number"]) == ("task_failed", "collect_documents", 1)
    assert alert["message"].startswith("AirflowFailException: no document could be extracted")
    assert "broken.pdf" in alert["message"] and alert["runbook"].startswith("collect_documents")

    store = open_store(str(tmp_path / "store"))
    summary = json.loads(store.read_bytes(f"bonito_dataset/{safe_segment(dag_run.run_id)}/summary.json"))
    assert summary["stages"]["extract"] == "failed (NothingExtracted)"
    assert summary["stages"]["generate"] == "not started"
    assert summary["failed_stage"] == "extract" and "broken.pdf" in json.dumps(summary["cause"])


def test_generate_is_mapped_in_gpu_pool(dag):
    generate = dag.get_task("generate")
    assert generate.pool == "gpu" and generate.queue == "gpu"
    assert type(generate).__name__ == "MappedOperator"
