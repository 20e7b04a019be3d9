"""The operators of plugins/bonito_airflow in the Airflow providers' style: execute(context) with the
library call mocked (the real calls, on a real engine, are covered by tests/integration and the e2e
DAG run). The manifests they read are real ones, in a real local store."""

from types import SimpleNamespace
from unittest import mock

import pytest

from bonito_tasks.contracts import (
    ChunkMetrics,
    ExtractMetrics,
    GenerateMetrics,
    Manifest,
    PlanMetrics,
    RunRef,
    ShardRef,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.store import LocalStore
from conftest import TINY_MODEL

pytestmark = pytest.mark.airflow

RUN = RunRef(dag_id="bonito_dataset", run_id="run-1")


def _manifest(store, stage: str, metrics, *, shards=(), counts=None, partition: str = "") -> Manifest:
    """A committed manifest of `stage`, written where and as the library writes it."""
    key = f"{RUN.dag_id}/{RUN.run_id}/{stage}{partition}/_manifest.json"
    manifest = Manifest(stage=stage, dag_id=RUN.dag_id, run_id=RUN.run_id, uri=store.uri(key), shards=list(shards),
                        counts=counts or {}, metrics=metrics, config_sha256="x", code_version="test")
    store.write_bytes(key, manifest.to_json().encode())
    return manifest


def _context(store, op, **params):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    params = {"source": "/docs", "store": str(store.root), "model_id": str(TINY_MODEL), **params}
    return {"params": params, "dag_run": SimpleNamespace(dag_id=RUN.dag_id, run_id=RUN.run_id), "task": op,
            "ti": mock.Mock(), "outlet_events": OutletEventAccessors()}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


# ---- The idiom: BonitoStageOperator


def _stage_operator(run_stage, **kwargs):
    from bonito_airflow.operators import BonitoStageOperator

    class Stage(BonitoStageOperator):
        def run_stage(self, rt, context):
            return run_stage(rt, context)

    return Stage(task_id="stage", **kwargs)


def test_stage_operator_returns_manifest_uri_and_counts_and_feeds_asset_events(store):
    from airflow.sdk import Asset

    documents = _manifest(store, "extract", ExtractMetrics(documents=3), counts={"documents": 3, "rejects": 1})
    seen = {}

    def run_stage(rt, context):
        seen.update(config=rt.config, run=rt.run, store=rt.store)
        return documents

    asset = Asset(name="bonito_dataset/documents", uri="bonito://bonito_dataset/documents")
    op = _stage_operator(run_stage, outlets=[asset])
    context = _context(store, op, n=2)
    result = op.execute(context)

    # Rows per table, then the stage's integer metrics (which win where both name a count).
    assert result == {"manifest": documents.uri, "counts": {"documents": 3, "rejects": 1} | documents.metrics.counts()}
    assert result["counts"]["documents"] == 3 and result["counts"]["files"] == 0
    assert context["outlet_events"][asset].extra == {"run_id": RUN.run_id, **result}
    assert seen["config"].n == 2 and seen["store"].root_uri == store.root_uri
    assert (seen["run"].dag_id, seen["run"].run_id) == (RUN.dag_id, RUN.run_id)
    assert seen["run"].run_url.endswith(f"/dags/{RUN.dag_id}/runs/{RUN.run_id}")


class _NotServed(PermanentFailure):
    pass


def test_a_permanent_failure_fails_the_task_without_retries(store):
    from airflow.sdk.exceptions import AirflowFailException

    cause = _NotServed("model 'bonito' is not served")
    op = _stage_operator(mock.Mock(side_effect=cause))
    with pytest.raises(AirflowFailException, match="^model 'bonito' is not served$") as failed:
        op.execute(_context(store, op))
    assert failed.value.__cause__ is cause


def test_any_other_failure_propagates_to_be_retried(store):
    op = _stage_operator(mock.Mock(side_effect=ConnectionError("S3 endpoint unreachable")))
    with pytest.raises(ConnectionError, match="unreachable"):
        op.execute(_context(store, op))


def test_the_library_marks_its_unretryable_failures():
    """The runbooks promise "fails without retries" for these: each must be a PermanentFailure."""
    from bonito_tasks.extract import NothingExtracted
    from bonito_tasks.generate.engine import EngineFailure, EngineRejected
    from bonito_tasks.validate import ValidationFailed

    for error in (NothingExtracted, ValidationFailed, EngineRejected):
        assert issubclass(error, PermanentFailure), error
    rejected = EngineRejected("bad API key")
    assert isinstance(rejected, EngineFailure) and rejected.kind == "rejected"
    assert not issubclass(EngineFailure, PermanentFailure)  # out of memory, engine died: retried


# ---- One operator per task


def _xcom(manifest: Manifest) -> dict:
    return {"manifest": manifest.uri, "counts": manifest.counts | manifest.metrics.counts()}


def test_plan_returns_one_entry_per_partition_and_pushes_its_own_output(store):
    from bonito_airflow.operators import STAGE_OUTPUT_KEY, BonitoPlanOperator

    planned = _manifest(store, "plan", PlanMetrics(files=9, partitions=3))
    op = BonitoPlanOperator(task_id="plan")
    context = _context(store, op)
    with mock.patch("bonito_tasks.extract.plan.plan", return_value=planned) as plan:
        result = op.execute(context)
    store_arg, run, config, s3_kwargs = plan.call_args.args
    assert run.run_id == RUN.run_id and config.source == "/docs" and s3_kwargs == {}
    assert result == [{"manifest": planned.uri, "partition": p} for p in range(3)]
    context["ti"].xcom_push.assert_called_once_with(key=STAGE_OUTPUT_KEY, value=_xcom(planned))


def test_extract_delegates_one_partition(store):
    from bonito_airflow.operators import BonitoExtractOperator

    planned = _manifest(store, "plan", PlanMetrics(partitions=2))
    committed = _manifest(store, "extract", ExtractMetrics(documents=2), counts={"documents": 2},
                          partition="/shard-00001")
    op = BonitoExtractOperator(task_id="extract", partition={"manifest": planned.uri, "partition": 1})
    with mock.patch("bonito_tasks.extract.extract_partition", return_value=committed) as extract:
        assert op.execute(_context(store, op)) == _xcom(committed)
    store_arg, run, config, plan_arg, partition, s3_kwargs = extract.call_args.args
    assert (plan_arg, partition, s3_kwargs) == (planned, 1, {}) and op.template_fields == ("partition",)


def test_collect_documents_reads_every_partition(store):
    from bonito_airflow.operators import BonitoCollectDocumentsOperator

    parts = [_manifest(store, "extract", ExtractMetrics(documents=i), partition=f"/shard-{i:05d}") for i in (0, 1)]
    combined = _manifest(store, "extract", ExtractMetrics(documents=1, partitions=2))
    op = BonitoCollectDocumentsOperator(task_id="collect_documents", partitions=[_xcom(m) for m in parts])
    with mock.patch("bonito_tasks.extract.collect_documents", return_value=combined) as collect:
        assert op.execute(_context(store, op)) == _xcom(combined)
    assert collect.call_args.args[3] == parts


def test_chunk_delegates_one_partition(store):
    from bonito_airflow.operators import BonitoChunkOperator

    documents = _manifest(store, "extract", ExtractMetrics(documents=2, partitions=2), counts={"documents": 2})
    committed = _manifest(store, "chunk", ChunkMetrics(chunks=5), partition="/shard-00001")
    op = BonitoChunkOperator(task_id="chunk", documents=_xcom(documents), partition={"manifest": "p", "partition": 1})
    with mock.patch("bonito_tasks.chunk.chunk_partition", return_value=committed) as chunk:
        assert op.execute(_context(store, op)) == _xcom(committed)
    assert chunk.call_args.args[3:] == (documents, 1)
    assert op.template_fields == ("documents", "partition")


def test_plan_shards_returns_one_entry_per_generate_shard_and_pushes_its_own_output(store):
    from bonito_airflow.operators import STAGE_OUTPUT_KEY, BonitoPlanShardsOperator

    partitions = [_manifest(store, "chunk", ChunkMetrics(chunks=9), partition=f"/shard-{i:05d}") for i in (0, 1)]
    shards = [ShardRef(table="chunks", path=f"part-{i}.chunks.parquet", rows=rows, sha256="0" * 64)
              for i, rows in enumerate((2048, 2048, 100))]
    chunks = _manifest(store, "chunk", ChunkMetrics(chunks=4196, shards=2, shard_parts=[0, 2]), shards=shards,
                       counts={"chunks": 4196})
    op = BonitoPlanShardsOperator(task_id="plan_shards", partitions=[_xcom(m) for m in partitions])
    context = _context(store, op)
    with mock.patch("bonito_tasks.chunk.plan_shards", return_value=chunks) as plan_shards:
        result = op.execute(context)

    assert plan_shards.call_args.args[3] == partitions
    assert result == [{"manifest": chunks.uri, "shard": 0, "chunks": 4096},
                      {"manifest": chunks.uri, "shard": 1, "chunks": 100}]
    context["ti"].xcom_push.assert_called_once_with(key=STAGE_OUTPUT_KEY, value=_xcom(chunks))
    assert op.stage_ref.key == STAGE_OUTPUT_KEY and op.stage_ref.operator is op


def test_chunk_skips_when_there_is_no_new_document(store):
    from airflow.sdk.exceptions import AirflowSkipException

    from bonito_airflow.operators import BonitoChunkOperator

    op = BonitoChunkOperator(task_id="chunk", partition={"manifest": "unused", "partition": 0},
                             documents={"manifest": "unused", "counts": {"documents": 0, "skipped_known": 7}})
    with mock.patch("bonito_tasks.chunk.chunk_partition") as chunk, pytest.raises(AirflowSkipException,
                                                                                  match="7 known"):
        op.execute(_context(store, op))
    chunk.assert_not_called()


def test_generate_delegates_one_shard(store):
    from bonito_airflow.operators import BonitoGenerateOperator

    chunks = _manifest(store, "chunk", ChunkMetrics())
    op = BonitoGenerateOperator(task_id="generate", chunk_shard={"manifest": chunks.uri, "shard": 3, "chunks": 10})
    committed = _manifest(store, "generate", GenerateMetrics(), counts={"examples": 7}, partition="/shard-00003")
    with mock.patch("bonito_tasks.generate.run.generate_shard", return_value=committed) as generate_shard:
        result = op.execute(_context(store, op, n=2))

    store_arg, run, config, chunks_arg, shard = generate_shard.call_args.args
    assert (run.dag_id, run.run_id, shard) == ("bonito_dataset", "run-1", 3)
    assert config.n == 2 and chunks_arg == chunks and store_arg.root_uri == store.root_uri
    assert result == _xcom(committed) and result["counts"]["examples"] == 7
    assert op.template_fields == ("chunk_shard",)


def test_server_backend_uses_connection_and_fails_fast_on_rejection(store, monkeypatch):
    """backend=server: the URL and key come from the connection; a rejected request is not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_airflow.operators import BonitoGenerateOperator
    from bonito_tasks.generate.engine import EngineRejected

    monkeypatch.setenv("AIRFLOW_CONN_GEN_SERVER", '{"conn_type": "http", "host": "http://127.0.0.1", "port": 8000, '
                                                  '"password": "sk-secret"}')
    chunks = _manifest(store, "chunk", ChunkMetrics())
    op = BonitoGenerateOperator(task_id="generate", chunk_shard={"manifest": chunks.uri, "shard": 0, "chunks": 10},
                                server_conn_id="gen_server")
    built = {}

    class FakeServerEngine:  # stands in for OpenAICompletionsEngine; the real one is tested against vllm serve
        def __init__(self, config, url, api_key=None, **kwargs):
            built.update(url=url, api_key=api_key, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            built["closed"] = True

    monkeypatch.setattr("bonito_tasks.generate.server.OpenAICompletionsEngine", FakeServerEngine)
    rejected = EngineRejected("model 'bonito' is not served")
    with mock.patch("bonito_tasks.generate.run.generate_shard", side_effect=rejected) as generate_shard:
        with pytest.raises(AirflowFailException, match="not served"):
            op.execute(_context(store, op, model_id="bonito", backend="server"))
    assert isinstance(generate_shard.call_args.kwargs["engine"], FakeServerEngine)
    assert built == {"url": "http://127.0.0.1:8000", "api_key": "sk-secret", "concurrency": 16,
                     "served_model_name": None, "closed": True}


def test_validate_shard_reads_its_generate_shard_and_the_chunks(store):
    from bonito_airflow.operators import BonitoValidateShardOperator

    chunks = _manifest(store, "chunk", ChunkMetrics(shards=2))
    generated = _manifest(store, "generate", GenerateMetrics(prompts=1), partition="/shard-00001")
    op = BonitoValidateShardOperator(task_id="validate_shard", generated={"manifest": generated.uri},
                                     chunks={"manifest": chunks.uri, "counts": {}})
    committed = _manifest(store, "extract", ExtractMetrics(), counts={"passed": 5})  # any manifest will do
    with mock.patch("bonito_tasks.validate.validate_shard", return_value=committed) as validate_shard:
        assert op.execute(_context(store, op))["counts"]["passed"] == 5
    assert validate_shard.call_args.args[3:] == (generated, chunks, 1)  # the shard its manifest is of
    assert op.template_fields == ("generated", "chunks")


def test_validate_reads_every_validate_partition(store):
    from bonito_airflow.operators import BonitoValidateOperator

    partitions = [_manifest(store, "validate", GenerateMetrics(prompts=i), partition=f"/shard-{i:05d}") for i in (0, 1)]
    op = BonitoValidateOperator(task_id="validate", partitions=[{"manifest": m.uri} for m in partitions])
    committed = _manifest(store, "extract", ExtractMetrics(), counts={"passed": 5})
    with mock.patch("bonito_tasks.validate.combine_validated", return_value=committed) as combine:
        assert op.execute(_context(store, op))["counts"]["passed"] == 5
    assert combine.call_args.args[3] == partitions
    assert op.template_fields == ("partitions",)


def test_update_ledger_records_the_documents(store):
    from bonito_airflow.operators import BonitoLedgerOperator

    documents = _manifest(store, "extract", ExtractMetrics(documents=2))
    op = BonitoLedgerOperator(task_id="update_ledger", documents={"manifest": documents.uri})
    from bonito_tasks.ledger import LedgerUpdate

    with mock.patch("bonito_tasks.ledger.update_ledger", return_value=LedgerUpdate(recorded=2)) as update_ledger:
        assert op.execute(_context(store, op)) == LedgerUpdate(recorded=2).model_dump(mode="json")
    assert update_ledger.call_args.args[2] == documents


@pytest.mark.parametrize("failed", [0, 2])
def test_summary_is_pushed_and_fails_the_run_when_a_task_failed(store, failed):
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_airflow.operators import BonitoSummaryOperator

    op = BonitoSummaryOperator(task_id="summarize")
    context = _context(store, op)
    context["ti"].get_ti_count.return_value = failed
    summary = mock.Mock(cause=None, **{"model_dump.return_value": {"stages": {"extract": "committed"}}})
    with mock.patch("bonito_tasks.summary.run_summary", return_value=summary), \
            mock.patch("bonito_tasks.summary.format_summary", return_value="run summary"):
        if failed:
            with pytest.raises(AirflowFailException, match="2 task"):
                op.execute(context)
        else:
            assert op.execute(context) is None
    context["ti"].xcom_push.assert_called_once_with(key="summary", value={"stages": {"extract": "committed"}})
    summary.model_dump.assert_called_once_with(mode="json")


def test_engine_core_stays_in_the_task_process_only_under_the_task_supervisor(monkeypatch):
    from bonito_airflow.operators import _no_child_processes

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db")  # dag.test()
    assert not _no_child_processes()
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")  # what the supervisor sets
    assert _no_child_processes()
