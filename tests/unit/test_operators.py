"""BonitoGenerateOperator in the Airflow providers' style: execute() with the library call mocked
(the real call, on a real engine, is covered by tests/integration and the e2e DAG run)."""

from types import SimpleNamespace
from unittest import mock

import pytest

from bonito_tasks.contracts import CHUNKS, RunRef
from bonito_tasks.store import LocalStore, StageWriter
from conftest import TINY_MODEL

pytestmark = pytest.mark.airflow


def test_execute_delegates_one_shard(tmp_path):
    from bonito_airflow.operators import BonitoGenerateOperator

    store = LocalStore(tmp_path / "store")
    writer = StageWriter(store, RunRef(dag_id="bonito_dataset", run_id="run-1"), "chunk")
    writer.begin()
    writer.add("chunks", CHUNKS.empty_table())
    chunks = writer.commit(config_sha256="x")
    params = {"source": "/docs", "store": str(tmp_path / "store"), "model_id": str(TINY_MODEL), "n": 2}
    op = BonitoGenerateOperator(task_id="generate", chunk_shard={"manifest": chunks.uri, "shard": 3})
    context = {"params": params, "dag_run": SimpleNamespace(dag_id="bonito_dataset", run_id="run-1"), "task": op}
    committed = chunks.model_copy(update={"stage": "generate", "counts": {"examples": 7}})
    with mock.patch("bonito_tasks.generate.run.generate_shard", return_value=committed) as generate_shard:
        result = op.execute(context)

    store_arg, run, config, chunks_arg, shard = generate_shard.call_args.args
    assert (run.dag_id, run.run_id, shard) == ("bonito_dataset", "run-1", 3)
    assert config.n == 2 and chunks_arg == chunks and store_arg.root_uri == store.root_uri
    assert result == {"manifest": committed.uri, "counts": {"examples": 7}}
    assert op.template_fields == ("chunk_shard",)


def test_server_backend_uses_connection_and_fails_fast_on_rejection(tmp_path, monkeypatch):
    """backend=server: the URL and key come from the connection; a rejected request is not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_airflow.operators import BonitoGenerateOperator
    from bonito_tasks.generate.engine import EngineFailure

    monkeypatch.setenv("AIRFLOW_CONN_GEN_SERVER", '{"conn_type": "http", "host": "http://127.0.0.1", "port": 8000, '
                                                  '"password": "sk-secret"}')
    store = LocalStore(tmp_path / "store")
    writer = StageWriter(store, RunRef(dag_id="bonito_dataset", run_id="run-1"), "chunk")
    writer.begin()
    writer.add("chunks", CHUNKS.empty_table())
    chunks = writer.commit(config_sha256="x")
    params = {"source": "/docs", "store": str(tmp_path / "store"), "model_id": "bonito", "backend": "server"}
    context = {"params": params, "dag_run": SimpleNamespace(dag_id="bonito_dataset", run_id="run-1")}
    op = BonitoGenerateOperator(task_id="generate", chunk_shard={"manifest": chunks.uri, "shard": 0},
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
    rejected = EngineFailure("model 'bonito' is not served", "rejected")
    with mock.patch("bonito_tasks.generate.run.generate_shard", side_effect=rejected) as generate_shard:
        with pytest.raises(AirflowFailException, match="not served"):
            op.execute(context)
    assert isinstance(generate_shard.call_args.kwargs["engine"], FakeServerEngine)
    assert built == {"url": "http://127.0.0.1:8000", "api_key": "sk-secret", "concurrency": 16,
                     "served_model_name": None, "closed": True}


def test_engine_core_stays_in_the_task_process_only_under_the_task_supervisor(monkeypatch):
    from bonito_airflow.operators import _no_child_processes

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db")  # dag.test()
    assert not _no_child_processes()
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")  # what the supervisor sets
    assert _no_child_processes()
