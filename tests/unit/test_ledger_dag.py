"""The DAG with nothing new to do: extract succeeds with 0 documents, chunk and what needs its
output skip, update_ledger still runs (publish was skipped, not failed) and records the new
reject, and the summary reports the known documents."""

import json

import pyarrow.compute as pc
import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import extract
from bonito_tasks.ledger import read_ledger, update_ledger
from bonito_tasks.store import LocalStore, safe_segment
from conftest import TINY_MODEL, make_config
from docfactory import write_good_corpus

pytestmark = pytest.mark.airflow

SKIPPED = {"chunk", "generate", "validate", "publish"}


def test_run_with_no_new_documents_skips_downstream_and_remembers_its_rejects(tmp_path):
    from bonito_dev.local import load_dag, setup_db

    write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    earlier = RunRef(dag_id="bonito_dataset", run_id="scheduled__earlier")
    config = make_config(tmp_path, source=str(tmp_path / "src"))
    update_ledger(store, earlier, extract(store, earlier, config), config)  # a previous night published them all
    (tmp_path / "src" / "broken.pdf").write_bytes(b"%PDF-1.4 arrived broken overnight")

    setup_db()
    conf = {"source": str(tmp_path / "src"), "store": str(tmp_path / "store"), "model_id": str(TINY_MODEL),
            "dtype": "float32"}
    dag_run = load_dag("bonito_dataset").test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success"
    assert {t: states.pop(t) for t in SKIPPED} == dict.fromkeys(SKIPPED, "skipped"), states
    assert set(states.values()) == {"success"}, states  # extract, update_ledger, summarize (and any check)
    assert "update_ledger" in states
    summary = json.loads(store.read_bytes(f"bonito_dataset/{safe_segment(dag_run.run_id)}/summary.json"))
    assert summary["extracted"]["documents"] == 0 and summary["extracted"]["skipped_known"] > 0
    assert summary["extracted"]["rejects"] == 1
    ledger = read_ledger(store, "bonito_dataset")
    rejects = ledger.filter(pc.equal(ledger["kind"], "reject"))
    assert rejects["source_uri"].to_pylist() == [str(tmp_path / "src" / "broken.pdf")]
