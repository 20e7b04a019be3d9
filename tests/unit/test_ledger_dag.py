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

SKIPPED = {"chunk", "generate", "validate_shard", "validate", "publish"}


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
    assert {t: states[t] for t in SKIPPED} == dict.fromkeys(SKIPPED, "skipped"), states
    assert states["update_ledger"] == states["summarize"] == "success", states
    assert set(states.values()) == {"success", "skipped"}, states
    summary = json.loads(store.read_bytes(f"bonito_dataset/{safe_segment(dag_run.run_id)}/summary.json"))
    assert summary["extracted"]["documents"] == 0 and summary["extracted"]["skipped_known"] > 0
    assert summary["extracted"]["rejects"] == 1
    ledger = read_ledger(store, "bonito_dataset")
    rejects = ledger.filter(pc.equal(ledger["kind"], "reject"))
    assert rejects["source_uri"].to_pylist() == [str(tmp_path / "src" / "broken.pdf")]


@pytest.mark.parametrize("published", [True, False])
def test_the_operator_records_documents_only_when_publish_committed(tmp_path, published):
    from bonito_airflow.operators import BonitoLedgerOperator
    from bonito_airflow.runtime import TaskRuntime
    from bonito_tasks.stage import StageWriter

    write_good_corpus(tmp_path / "src")
    (tmp_path / "src" / "broken.pdf").write_bytes(b"junk")
    store = LocalStore(tmp_path / "store")
    run, config = RunRef(dag_id="bonito_dataset", run_id="r"), make_config(tmp_path, source=str(tmp_path / "src"))
    documents = extract(store, run, config)
    if published:
        store.write_bytes(StageWriter(store, run, "publish").manifest_key, b"{}")  # only its presence counts
    op = BonitoLedgerOperator(task_id="update_ledger", documents={"manifest": documents.uri})
    assert op.trigger_rule == "none_failed"
    result = op.run(TaskRuntime(config=config, run=run, store=store, s3_client_kwargs={}), {})
    assert result["recorded"] == (documents.metrics.documents if published else 0)
    assert result["rejects_recorded"] == 1
