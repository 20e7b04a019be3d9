"""Incremental runs: the ledger of published doc_ids makes a nightly run process only what is new."""

import json
import threading

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import NothingExtracted, extract
from bonito_tasks.ledger import ledger_prefix, load_ledger, update_ledger
from bonito_tasks.store import LocalStore, S3Store
from conftest import make_config
from docfactory import write_good_corpus

DAG = "nightly"


def nightly(store, tmp_path, n, publish=True, **overrides):
    """One scheduled run: extract, then (when 'publish' succeeds) record the ledger."""
    run = RunRef(dag_id=DAG, run_id=f"scheduled__{n}")
    manifest = extract(store, run, make_config(tmp_path, source=str(tmp_path / "src"), **overrides))
    if publish:
        update_ledger(store, run, manifest)
    return manifest


def test_second_run_processes_nothing_then_exactly_the_new_file(tmp_path):
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    first = nightly(store, tmp_path, 1)
    assert first.metrics.documents == len(files)

    second = nightly(store, tmp_path, 2)
    assert second.metrics.documents == 0 and second.metrics.skipped_known == len(files)
    assert second.shards_of("documents") == []

    (tmp_path / "src" / "new.txt").write_text("A new policy arrived overnight and must be processed.")
    third = nightly(store, tmp_path, 3)
    assert third.metrics.documents == 1
    assert store.read_table(third, "documents")["source_uri"].to_pylist()[0].endswith("new.txt")

    (tmp_path / "src" / "plain.txt").write_text("The plain file was edited: changed content is a new document.")
    assert nightly(store, tmp_path, 4).metrics.documents == 1

    refreshed = nightly(store, tmp_path, 5, full_refresh=True)
    assert refreshed.metrics.documents == len(files) + 1 and refreshed.metrics.skipped_known == 0


def test_failed_run_is_retried_next_night(tmp_path):
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1, publish=False)  # publish failed: the ledger is not updated
    assert load_ledger(store, DAG) == set()
    assert nightly(store, tmp_path, 2).metrics.documents == len(files)


def test_all_rejected_still_fails_with_a_ledger(tmp_path):
    write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.pdf").write_bytes(b"junk")
    with pytest.raises(NothingExtracted):
        extract(store, RunRef(dag_id=DAG, run_id="r2"), make_config(tmp_path, source=str(bad)))


def test_tabular_rows_are_incremental(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"text": f"Row {i} of the export, about clause {i}."} for i in range(5)]
    (src / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = LocalStore(tmp_path / "store")
    assert nightly(store, tmp_path, 1).metrics.documents == 5
    rows.append({"text": "A row appended to the export."})
    (src / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = nightly(store, tmp_path, 2)
    assert again.metrics.documents == 1 and again.metrics.skipped_known == 5


def test_retry_does_not_append_twice_and_concurrent_runs_keep_both(tmp_path):
    write_good_corpus(tmp_path / "src")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "o.txt").write_text("A document only the other run sees.")
    store = LocalStore(tmp_path / "store")
    runs = [RunRef(dag_id=DAG, run_id=r) for r in ("a", "b")]
    manifests = [extract(store, runs[0], make_config(tmp_path, source=str(tmp_path / "src"))),
                 extract(store, runs[1], make_config(tmp_path, source=str(tmp_path / "other")))]
    first = update_ledger(store, runs[0], manifests[0])
    assert update_ledger(store, runs[0], manifests[0])["recorded"] == first["recorded"]  # a retry
    threads = [threading.Thread(target=update_ledger, args=(store, r, m)) for r, m in zip(runs, manifests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parts = [k for k in store.list(ledger_prefix(DAG)) if k.endswith(".parquet")]
    assert len(parts) == 2
    assert len(load_ledger(store, DAG)) == first["recorded"] + 1


def test_ledger_in_s3_store(tmp_path, s3_bucket):
    bucket, kwargs = s3_bucket
    write_good_corpus(tmp_path / "src")
    store = S3Store(f"s3://{bucket}/store", **kwargs)
    assert nightly(store, tmp_path, 1).metrics.documents == 6
    assert nightly(store, tmp_path, 2).metrics.documents == 0
