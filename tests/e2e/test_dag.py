"""The whole DAG, run for real with dag.test() on the bundled samples and the tiny model."""

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.store import StageWriter, open_store
from conftest import SAMPLE_DOCS, TINY_MODEL

pytestmark = [pytest.mark.airflow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def dag():
    from bonito_airflow.local import load_dag, setup_db

    setup_db()
    return load_dag("bonito_dataset")


def test_dagbag_has_no_import_errors(dag):
    # load_dag raises on any import error in the dags folder.
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "chunk", "generate", "validate", "publish",
                                                           "update_ledger"]
    for t in dag.tasks:
        assert t.retries >= 1 and t.retry_exponential_backoff and t.doc_md


def test_full_run_publishes_dataset_with_lineage(dag, tmp_path):
    import datasets

    store_root = tmp_path / "store"
    conf = {"source": str(SAMPLE_DOCS), "store": str(store_root), "model_id": str(TINY_MODEL),
            "dtype": "float32", "task_types": ["exqa", "ynqa"], "chunk_shard_size": 20,
            # The tiny model knows nothing: gate the plumbing, not its answers' quality.
            "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0}
    dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "success"

    store = open_store(str(store_root))
    run = RunRef(dag_id="bonito_dataset", run_id=dag_run.run_id)
    documents, chunks, published = (StageWriter(store, run, s).committed() for s in ("extract", "chunk", "publish"))
    assert documents.counts["rejects"] >= 1  # the bundled broken file, recorded and skipped

    dataset = datasets.load_dataset(published.metrics["dataset_uri"], split="train")
    assert dataset.num_rows == published.metrics["examples"] > 0
    chunk_rows = {r["chunk_id"]: r for r in store.read_table(chunks, "chunks").to_pylist()}
    doc_ids = set(store.read_table(documents, "documents")["doc_id"].to_pylist())
    for row in dataset:
        chunk = chunk_rows[row["chunk_id"]]
        assert row["doc_id"] == chunk["doc_id"] and row["doc_id"] in doc_ids
        assert (row["char_start"], row["char_end"]) == (chunk["char_start"], chunk["char_end"])
        assert row["run_id"] == dag_run.run_id and row["task_type"] in ("exqa", "ynqa")


def test_generate_is_mapped_in_gpu_pool(dag):
    generate = dag.get_task("generate")
    assert generate.pool == "gpu" and generate.queue == "gpu"
    assert type(generate).__name__ == "MappedOperator"
