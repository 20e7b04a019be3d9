"""The DAG with nothing new to do: extract succeeds with 0 documents, everything after it skips
but the summary, which reports the known documents."""

import json

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import extract
from bonito_tasks.ledger import update_ledger
from bonito_tasks.store import LocalStore, safe_segment
from conftest import TINY_MODEL, make_config
from docfactory import write_good_corpus

pytestmark = pytest.mark.airflow


def test_run_with_no_new_documents_skips_downstream(tmp_path):
    from bonito_dev.local import load_dag, setup_db

    write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    earlier = RunRef(dag_id="bonito_dataset", run_id="scheduled__earlier")
    config = make_config(tmp_path, source=str(tmp_path / "src"))
    update_ledger(store, earlier, extract(store, earlier, config))  # a previous night published them all

    setup_db()
    dag_run = load_dag("bonito_dataset").test(run_conf={
        "source": str(tmp_path / "src"), "store": str(tmp_path / "store"), "model_id": str(TINY_MODEL),
        "dtype": "float32"})
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success"
    assert states.pop("extract") == states.pop("summarize") == "success"
    assert set(states.values()) == {"skipped"}, states
    summary = json.loads(store.read_bytes(f"bonito_dataset/{safe_segment(dag_run.run_id)}/summary.json"))
    assert summary["extracted"]["documents"] == 0 and summary["extracted"]["skipped_known"] > 0
