"""Rollback (#24, item 6): `bonito_dev.rollback` restores a release on the Hub's main in one new
commit and records in the ledger what it undid: the rolled-back runs' documents are processed
again (`--ledger reprocess`) or stay done (`--ledger skip`)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DOCUMENTS, EXAMPLES, ExtractMetrics, RunRef, SuiteRef, ValidateMetrics, sha256_hex
from bonito_tasks.ledger import compact_ledger, live_parts, load_ledger, read_ledger, update_ledger
from bonito_tasks.release import tag_name
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from tests.conftest import make_config

REPO = "bonito-team/rollback"
DAG = "bonito_dataset"


pytestmark = pytest.mark.usefixtures("hub_env")  # HF_TOKEN and HF_ENDPOINT set, as the CLI reads them


def night(store, tmp_path, hub, run_id: str, docs: list[str]):
    """One nightly run's extract and validate stages (one exqa example per document), published
    (append) to the Hub stand-in and recorded in the ledger, as the DAG's publish and ledger tasks do."""
    from bonito_tasks.publish import publish
    from tests.integration.test_publish_hub import FAST

    run = RunRef(dag_id=DAG, run_id=run_id)
    documents = [{"doc_id": sha256_hex(d), "source_uri": f"/docs/{d}.txt", "media_type": "text/plain",
                  "size_bytes": 10, "text": f"the text of {d}"} for d in docs]
    examples = [{"example_id": sha256_hex(f"{run_id}-{d}"), "task_type": "exqa", "input": f"What does {d} say?",
                 "output": f"It says {d}.", "doc_id": sha256_hex(d), "chunk_id": sha256_hex(f"chunk-{d}"),
                 "char_start": 0, "char_end": 10, "sample_index": 0, "model_id": "m", "model_revision": "r",
                 "sampling_params": "{}", "run_id": run_id} for d in docs]
    extract = StageWriter(store, run, "extract")
    extract.add("documents", pa.Table.from_pylist(documents, schema=DOCUMENTS))
    extracted = extract.commit(metrics=ExtractMetrics())
    validate = StageWriter(store, run, "validate")
    validate.add("examples", pa.Table.from_pylist(examples, schema=EXAMPLES))
    validated = validate.commit(metrics=ValidateMetrics(suite=SuiteRef(name="s", dataset_suite="d", version="1")))
    config = make_config(tmp_path, hub_repo_id=REPO, publish_mode="append")
    publish(store, run, config, validated, extracted, token=hub.token, endpoint=hub.url, retry=FAST)
    update_ledger(store, run, extracted, config)
    return config


def done(store, config, docs: list[str]) -> list[bool]:
    known = load_ledger(store, DAG, config)
    return [sha256_hex(d) in known for d in docs]


def rollback(store, to: str, *args: str) -> int:
    from bonito_dev.rollback import main

    return main([REPO, "--to", to, "--reason", "bad labels", "--who", "oncall", "--store", str(store.root), *args])


@pytest.fixture
def two_nights(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    night(store, tmp_path, hub, "scheduled__1", ["a1", "a2"])
    config = night(store, tmp_path, hub, "scheduled__2", ["b1", "b2"])
    assert done(store, config, ["a1", "a2", "b1", "b2"]) == [True] * 4
    return store, config


def test_a_rollback_revokes_the_later_runs_so_their_documents_are_processed_again(two_nights, hub, tmp_path, capsys):
    store, config = two_nights
    repo = hub.repo(REPO)
    first = dict(repo.resolve(tag_name("scheduled__1")).files)
    commits = len(repo.history())
    assert rollback(store, tag_name("scheduled__1")) == 0
    out = capsys.readouterr().out
    assert f"rolled back: {tag_name('scheduled__2')}: revoked, their documents are processed again" in out
    assert len(repo.history()) == commits + 1
    head = repo.resolve("main").files
    assert {p: hashlib.sha256(d).hexdigest() for p, d in head.items()} == \
        {p: hashlib.sha256(d).hexdigest() for p, d in first.items()}
    assert done(store, config, ["a1", "a2", "b1", "b2"]) == [True, True, False, False]
    revoke = read_ledger(store, DAG).filter(pa.compute.equal(read_ledger(store, DAG)["kind"], "revoke")).to_pylist()
    assert [(r["key"], r["scope"], r["reason"]) for r in revoke] == [
        (tag_name("scheduled__2"), repo.refs["main"], "oncall: bad labels")]

    # Compaction keeps it; the next night processes b1 and b2 again, and they count as done once more.
    compact_ledger(store, DAG, max_parts=0)
    assert done(store, config, ["a1", "b1"]) == [True, False]
    night(store, tmp_path, hub, "scheduled__3", ["b1", "b2"])
    compact_ledger(store, DAG, max_parts=0)
    assert len(live_parts(store, DAG)) == 1 and done(store, config, ["a1", "a2", "b1", "b2"]) == [True] * 4


def test_skip_records_the_rollback_and_keeps_the_documents_done(two_nights, hub, capsys):
    store, config = two_nights
    assert rollback(store, tag_name("scheduled__1"), "--ledger", "skip") == 0
    assert "marked skipped, their documents stay recorded as processed" in capsys.readouterr().out
    assert done(store, config, ["b1", "b2"]) == [True, True]
    assert read_ledger(store, DAG).filter(pa.compute.equal(read_ledger(store, DAG)["kind"], "skip"))["key"] \
        .to_pylist() == [tag_name("scheduled__2")]


def test_rolling_back_to_the_later_release_undoes_the_rollback(two_nights, hub, capsys):
    store, config = two_nights
    assert rollback(store, tag_name("scheduled__1")) == 0
    compact_ledger(store, DAG, max_parts=0)  # the revoked run's rows survive compaction, for a restore
    assert rollback(store, tag_name("scheduled__2")) == 0
    assert f"back on main: {tag_name('scheduled__2')}" in capsys.readouterr().out
    assert done(store, config, ["a1", "a2", "b1", "b2"]) == [True] * 4
    assert hub.repo(REPO).resolve("main").files == hub.repo(REPO).resolve(tag_name("scheduled__2")).files


def test_a_lost_commit_answer_makes_one_commit_and_the_ledger_records_it_once(two_nights, hub):
    store, config = two_nights
    repo = hub.repo(REPO)
    commits, parts = len(repo.history()), len(live_parts(store, DAG))
    hub.lose_answer("POST", r"/commit/main")
    assert rollback(store, tag_name("scheduled__1")) == 0
    assert len(repo.history()) == commits + 1 and len(live_parts(store, DAG)) == parts + 1
    # The same command again (say the ledger write had failed): no new commit, the same ledger part.
    assert rollback(store, tag_name("scheduled__1")) == 0
    assert len(repo.history()) == commits + 1 and len(live_parts(store, DAG)) == parts + 1
    assert done(store, config, ["a1", "b1"]) == [True, False]


def test_an_unknown_tag_or_a_store_without_the_ledger_stops_before_any_change(two_nights, hub, tmp_path, capsys):
    store, _ = two_nights
    repo = hub.repo(REPO)
    commits, parts = len(repo.history()), sorted(store.list(f"{DAG}/_ledger"))
    assert rollback(store, "release-nope") == 2
    assert "no tag 'release-nope'" in capsys.readouterr().err
    wrong = LocalStore(tmp_path / "elsewhere")
    assert rollback(wrong, tag_name("scheduled__1")) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert len(repo.history()) == commits and sorted(store.list(f"{DAG}/_ledger")) == parts
    assert not (tmp_path / "elsewhere").exists() or not wrong.list("")


def test_a_revoked_runs_chunks_are_no_near_duplicates_of_the_next_nights(tmp_path):
    import numpy as np

    from bonito_tasks import minhash
    from bonito_tasks.chunk.neardup import SKETCHES, _part_bytes, _parts, load_earlier, sketch_of
    from bonito_tasks.ledger import record_rollback, target_key

    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path)
    sigs = minhash.signatures(minhash.shingles(["the same passage of a document, word for word, " * 4]))
    part = pa.table({"scope": [target_key(config)], "task_types": [["exqa"]], "sketch": [sketch_of(sigs)[0].tobytes()],
                     "run_id": ["scheduled__2"]}, schema=SKETCHES)
    _parts(store, DAG).write("scheduled__2-x", _part_bytes(part))  # what the ledger task records after publish
    assert load_earlier(store, DAG, config, [(0, sigs)]).covered(0, np.array([0])) == [{"exqa"}]
    record_rollback(store, DAG, commit="c" * 40, source="hf://datasets/x@c", removed=[tag_name("scheduled__2")],
                    returned=[], skip=False, note="oncall: bad")
    assert load_earlier(store, DAG, config, [(0, sigs)]).covered(0, np.array([0])) == [frozenset()]


def test_the_default_store_is_the_nightly_runs(monkeypatch, tmp_path):
    from bonito_dev.rollback import default_store

    monkeypatch.delenv("BONITO_SCHEDULE_CONFIG", raising=False)
    monkeypatch.delenv("BONITO_STORE", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    assert default_store() == f"{tmp_path}/airflow/bonito-store"
    monkeypatch.setenv("BONITO_STORE", "s3://bucket/store")
    assert default_store() == "s3://bucket/store"
    monkeypatch.setenv("BONITO_SCHEDULE_CONFIG", '{"store": "s3://bucket/nightly"}')
    assert default_store() == "s3://bucket/nightly"


def test_a_missing_repo_or_an_unreachable_hub_is_one_clear_line(monkeypatch, capsys, tmp_path):
    """As `make rollback` without REPO=, and with HF_ENDPOINT pointing at nothing: no traceback,
    no token in the message, a non-zero exit."""
    from bonito_dev.processes import free_port
    from bonito_dev.rollback import main

    assert main(["", "--to", "release-x", "--reason", "bad night"]) == 2
    assert "org/name" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETsecret123")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert main(["org/name"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rollback failed talking to http://127.0.0.1:") and "Traceback" not in err
    assert "hf_SECRETsecret123" not in err and len(err.splitlines()) == 1
