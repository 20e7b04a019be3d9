"""Incremental runs: the ledger of what earlier runs published (per document, task type and
processing target) and of the files they rejected, and its compaction."""

import io
import json
import shutil
import threading
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bonito_tasks.contracts import RunRef, sha256_hex
from bonito_tasks.extract import NothingExtracted, extract
from bonito_tasks.extract.readers import READERS, TABLE_READERS
from bonito_tasks.ledger import (
    ANY,
    LEDGER,
    compact_ledger,
    ledger_prefix,
    live_parts,
    load_ledger,
    read_ledger,
    reject_scope,
    target_key,
    update_ledger,
    write_part,
)
from bonito_tasks.store import LocalStore, S3Store, parquet_bytes
from conftest import make_config
from docfactory import pdf_bytes, write_bad_corpus, write_good_corpus

DAG = "nightly"


def nightly(store, tmp_path, n, publish=True, source=None, **overrides):
    """One scheduled run: extract, then (when 'publish' succeeds) record the ledger."""
    run = RunRef(dag_id=DAG, run_id=f"scheduled__{n}")
    config = make_config(tmp_path, source=str(source or tmp_path / "src"), **overrides)
    manifest = extract(store, run, config)
    if publish:
        update_ledger(store, run, manifest, config)
    return manifest


def pending(store, manifest) -> dict[str, list[str] | None]:
    table = store.read_table(manifest, "documents", columns=["source_uri", "pending_task_types"])
    return {uri.rsplit("/", 1)[-1]: types for uri, types in
            zip(table["source_uri"].to_pylist(), table["pending_task_types"].to_pylist())}


# ---- Documents: skipped when every requested task type is done for the run's processing target


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


def test_a_new_task_type_processes_known_documents_for_that_type_only(tmp_path):
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    first = nightly(store, tmp_path, 1, task_types=["exqa"])
    assert set(pending(store, first).values()) == {None}  # new documents: all of the run's task types

    both = nightly(store, tmp_path, 2, task_types=["exqa", "ynqa"])
    assert both.metrics.documents == len(files) and both.metrics.skipped_known == 0
    assert pending(store, both) == {name: ["ynqa"] for name in files}  # what generate runs for each

    facts = read_ledger(store, DAG).filter(pa.compute.equal(read_ledger(store, DAG)["run_id"], "scheduled__2"))
    assert set(facts["task_type"].to_pylist()) == {"ynqa"}  # the second run recorded ynqa only

    assert nightly(store, tmp_path, 3, task_types=["exqa", "ynqa"]).metrics.documents == 0
    assert nightly(store, tmp_path, 4, task_types=["ynqa"]).metrics.documents == 0

    (tmp_path / "src" / "new.txt").write_text("A new document needs every task type of the run.")
    third = nightly(store, tmp_path, 5, task_types=["mcqa", "exqa", "ynqa"])
    assert third.metrics.documents == len(files) + 1
    assert pending(store, third) == {"new.txt": None} | {name: ["mcqa"] for name in files}


@pytest.mark.parametrize("change", [
    {"model_id": "BatsResearch/bonito-v1"}, {"model_revision": "0123abcd"}, {"hub_repo_id": "org/dataset"},
    {"export_s3_uri": "s3://bucket/export"},
])
def test_a_new_model_revision_or_publish_target_processes_every_document(tmp_path, change):
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1)
    again = nightly(store, tmp_path, 2, **change)
    assert again.metrics.documents == len(files) and set(pending(store, again).values()) == {None}
    assert nightly(store, tmp_path, 3, **change).metrics.documents == 0  # then it is known for that target
    assert nightly(store, tmp_path, 4).metrics.documents == 0  # and still for the first


def test_sampling_chunking_and_validation_params_are_not_part_of_the_target(tmp_path):
    base = make_config(tmp_path)
    tuned = make_config(tmp_path, temperature=0.9, top_p=0.5, n=3, max_tokens=128, chunk_overlap_tokens=8,
                        chunk_min_chars=10, min_pass_rate=0.5, publish_mode="append", hub_private=False)
    assert target_key(base) == target_key(tuned)
    assert target_key(base) == target_key(make_config(tmp_path, task_types=["ynqa"]))  # types are per row
    assert target_key(make_config(tmp_path, export_s3_uri="s3://b/x/")) == target_key(
        make_config(tmp_path, export_s3_uri="s3://b/x"))


def test_failed_run_is_retried_next_night(tmp_path):
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1, publish=False)  # publish failed: the ledger is not updated
    assert len(load_ledger(store, DAG, make_config(tmp_path))) == 0
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
    more = nightly(store, tmp_path, 3, task_types=["exqa", "ynqa"])
    assert more.metrics.documents == 6 and {tuple(v) for v in pending(store, more).values()} == {("ynqa",)}


def test_retry_does_not_append_twice_and_concurrent_runs_keep_both(tmp_path):
    write_good_corpus(tmp_path / "src")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "o.txt").write_text("A document only the other run sees.")
    store = LocalStore(tmp_path / "store")
    runs = [RunRef(dag_id=DAG, run_id=r) for r in ("a", "b")]
    configs = [make_config(tmp_path, source=str(tmp_path / folder)) for folder in ("src", "other")]
    manifests = [extract(store, run, config) for run, config in zip(runs, configs)]
    first = update_ledger(store, runs[0], manifests[0], configs[0])
    again = update_ledger(store, runs[0], manifests[0], configs[0])  # a retry
    assert again.recorded == first.recorded and again.ledger_part == first.ledger_part
    threads = [threading.Thread(target=update_ledger, args=(store, r, m, c))
               for r, m, c in zip(runs, manifests, configs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(live_parts(store, DAG)) == 2
    assert len(load_ledger(store, DAG, configs[0])) == first.recorded + 1
    assert read_ledger(store, DAG).num_rows == first.recorded + 1


def test_a_run_that_published_nothing_records_only_its_rejects(tmp_path):
    write_good_corpus(tmp_path / "src")
    (tmp_path / "src" / "broken.pdf").write_bytes(b"junk")
    store = LocalStore(tmp_path / "store")
    run, config = RunRef(dag_id=DAG, run_id="r"), make_config(tmp_path, source=str(tmp_path / "src"))
    result = update_ledger(store, run, extract(store, run, config), config, published=False)
    assert result.recorded == 0 and result.rejects_recorded == 1
    assert set(read_ledger(store, DAG)["kind"].to_pylist()) == {"reject"}


def test_parts_of_the_first_format_count_as_done_for_every_target(tmp_path):
    """Ledgers written before targets existed keep their meaning: those documents are not redone
    (a full_refresh redoes them); compaction carries them over."""
    files = write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    ids = [sha256_hex(data) for data in files.values()]
    legacy = pa.table({"doc_id": ids, "source_uri": list(files), "run_id": ["old"] * len(ids),
                       "recorded_at": ["2026-01-01T00:00:00+00:00"] * len(ids)})
    store.write_bytes(f"{ledger_prefix(DAG)}/part-old.parquet", parquet_bytes(legacy))
    assert nightly(store, tmp_path, 1, task_types=["exqa", "ynqa"], hub_repo_id="org/x").metrics.documents == 0
    compact_ledger(store, DAG, max_parts=0)
    assert [p.rsplit("/", 1)[-1].split("-")[0] for p in live_parts(store, DAG)] == ["compact"]
    assert set(read_ledger(store, DAG)["scope"].to_pylist()) == {ANY}
    assert nightly(store, tmp_path, 2).metrics.documents == 0
    assert nightly(store, tmp_path, 3, full_refresh=True).metrics.documents == len(files)


def test_memory_is_about_100_bytes_per_known_document(tmp_path):
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, task_types=["exqa", "ynqa"])
    n = 50_000
    ids = [sha256_hex(str(i)) for i in range(n)]
    rows = {"kind": ["done"] * 2 * n, "key": ids * 2, "scope": [target_key(config)] * 2 * n,
            "task_type": ["exqa"] * n + ["ynqa"] * n, "reason": [None] * 2 * n,
            "source_uri": [f"/corpus/file-{i}.pdf" for i in range(n)] * 2, "run_id": ["r"] * 2 * n,
            "recorded_at": ["t"] * 2 * n}
    write_part(store, RunRef(dag_id=DAG, run_id="r"), pa.table(rows, schema=LEDGER))
    tracemalloc.start()
    known = load_ledger(store, DAG, config)
    retained, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(known) == n and ids[0] in known
    assert len({id(types) for types in known.done.values()}) == 1  # one shared set of task types
    assert retained / n < 160, f"{retained / n:.0f} bytes per document"


# ---- Rejects: remembered by content (or by what decided them unread), skipped until the file changes


def spy_on_parsers(monkeypatch) -> list[str]:
    parsed: list[str] = []
    for table in (READERS, TABLE_READERS):
        for suffix, (media_type, reader) in list(table.items()):
            def spy(*args, _reader=reader, _suffix=suffix):
                parsed.append(_suffix)
                return _reader(*args)
            monkeypatch.setitem(table, suffix, (media_type, spy))
    return parsed


def test_rejects_are_remembered_and_skipped_until_the_file_changes(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good = write_good_corpus(src / "good")
    expected = write_bad_corpus(src, tmp_path / "outside")
    remembered = {name for name, reason in expected.items() if reason != "unreadable"}  # I/O errors may pass
    store = LocalStore(tmp_path / "store")
    limits = {"max_file_bytes": 200_000}
    first = nightly(store, tmp_path, 1, source=src, **limits)
    assert first.metrics.rejects == len(expected) and first.metrics.skipped_rejects == 0
    assert read_ledger(store, DAG).filter(pa.compute.equal(read_ledger(store, DAG)["kind"], "reject")).num_rows \
        == len(remembered)

    parsed = spy_on_parsers(monkeypatch)
    second = nightly(store, tmp_path, 2, source=src, **limits)
    assert parsed == []  # known documents and known rejects are skipped before parsing
    assert second.metrics.skipped_rejects == len(remembered) and second.metrics.skipped_known == len(good)
    assert second.metrics.rejects == len(expected) - len(remembered)  # the dangling link, reported again
    assert second.metrics.rejects_by_reason == {"unreadable": 1}

    (src / "bad/junk.pdf").write_bytes(pdf_bytes(["The broken PDF was replaced by a readable one."]))
    (src / "bad/truncated.docx").write_bytes(b"PK still no zip archive, but other bytes")
    (src / "bad/huge.txt").write_bytes(b"It grew, and is still too large. " * 20_000)
    (src / "bad/image.png").rename(src / "bad/image2.png")
    third = nightly(store, tmp_path, 3, source=src, **limits)
    assert third.metrics.documents == 1 and parsed == [".pdf", ".docx"]
    assert {r.source_uri.rsplit("/", 1)[-1]: r.reason for r in third.metrics.reject_samples} == {
        "truncated.docx": "corrupt_docx", "huge.txt": "too_large", "image2.png": "unsupported_format",
        "dangling.txt": "unreadable"}
    assert third.metrics.skipped_rejects == len(remembered) - 4

    retried = nightly(store, tmp_path, 4, source=src, retry_rejects=True, **limits)
    assert retried.metrics.skipped_rejects == 0 and retried.metrics.rejects == len(expected) - 1
    raised = nightly(store, tmp_path, 5, source=src, max_file_bytes=10_000_000)  # other settings: tried again
    assert raised.metrics.skipped_rejects == 0 and "too_large" not in raised.metrics.rejects_by_reason


def test_identical_bytes_elsewhere_are_a_known_reject(tmp_path):
    src = tmp_path / "src"
    write_good_corpus(src)
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1)
    shutil.copy(src / "broken.pdf", src / "copy-of-broken.pdf")
    (src / "broken.pdf").touch()  # a new mtime, the same bytes
    again = nightly(store, tmp_path, 2)
    assert again.metrics.skipped_rejects == 2 and again.metrics.rejects == 0


def test_a_source_of_known_rejects_only_is_nothing_new_not_a_failure(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("A readable document that is later removed from the source.")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1)
    (src / "ok.txt").unlink()
    again = nightly(store, tmp_path, 2)
    assert again.metrics.documents == 0 and again.metrics.skipped_rejects == 1 and again.metrics.rejects == 0


def test_an_extract_committed_before_the_upgrade_is_recorded_for_every_task_type(tmp_path, monkeypatch):
    """A run whose extract was committed by the code before this ledger (no pending_task_types, no
    ledger_key) and whose update_ledger runs after the upgrade."""
    files = write_good_corpus(tmp_path / "src")
    (tmp_path / "src" / "broken.pdf").write_bytes(b"junk")
    store = LocalStore(tmp_path / "store")
    run = RunRef(dag_id=DAG, run_id="across-the-upgrade")
    config = make_config(tmp_path, source=str(tmp_path / "src"), task_types=["exqa", "ynqa"])
    manifest = extract(store, run, config)
    read_shard = store.read_shard

    def before_the_upgrade(manifest, table, index, columns=None):
        if columns and {"pending_task_types", "ledger_key"} & set(columns):
            raise pa.ArrowInvalid("No match for FieldRef.Name(pending_task_types)")
        return read_shard(manifest, table, index, columns)

    monkeypatch.setattr(store, "read_shard", before_the_upgrade)
    result = update_ledger(store, run, manifest, config)
    assert result.recorded == len(files) and result.rejects_recorded == 0
    assert read_ledger(store, DAG).num_rows == 2 * len(files)


def test_reject_scope_follows_the_settings_that_decide_rejects(tmp_path):
    base = reject_scope(make_config(tmp_path))
    assert base == reject_scope(make_config(tmp_path, task_types=["ynqa"], hub_repo_id="org/x"))
    assert base != reject_scope(make_config(tmp_path, max_file_bytes=1000))
    assert base != reject_scope(make_config(tmp_path, text_column="body"))


# ---- Compaction


def facts(i: int, config, overlap: int = 0) -> pa.Table:
    """Rows of one run part: three documents of its own, plus `overlap` shared with part 0."""
    keys = [sha256_hex(f"{i}:{j}") for j in range(3)] + [sha256_hex(f"0:{j}") for j in range(overlap)]
    n = len(keys)
    return pa.table({"kind": ["done"] * n, "key": keys, "scope": [target_key(config)] * n, "task_type": ["exqa"] * n,
                     "reason": [None] * n, "source_uri": [f"/src/{k[:8]}" for k in keys], "run_id": [f"r{i}"] * n,
                     "recorded_at": [f"2026-01-{i + 1:02d}"] * n}, schema=LEDGER)


def ledger_with_parts(store, tmp_path, n: int):
    config = make_config(tmp_path)
    for i in range(n):
        write_part(store, RunRef(dag_id=DAG, run_id=f"r{i}"), facts(i, config, overlap=1 if i else 0))
    return config


def raw_rows(store) -> int:
    """Rows over the parts a reader reads: more than the distinct facts would be counting twice."""
    return sum(pq.read_table(io.BytesIO(store.read_bytes(k))).num_rows for k in live_parts(store, DAG))


def test_compaction_past_the_threshold_keeps_every_fact_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    config = ledger_with_parts(store, tmp_path, 6)
    before = read_ledger(store, DAG)
    assert before.num_rows == 6 * 3 and raw_rows(store) == 6 * 3 + 5  # part 0's first document is in every part
    assert compact_ledger(store, DAG, max_parts=6).compacted_parts == 0  # not past the threshold
    result = compact_ledger(store, DAG, max_parts=5)
    assert result.compacted_parts == 6 and result.rows == 18
    assert len(live_parts(store, DAG)) == 1 and len(store.list(ledger_prefix(DAG))) == 1
    assert read_ledger(store, DAG).equals(before) and raw_rows(store) == 18
    assert len(load_ledger(store, DAG, config)) == 18
    # The earliest record of a fact is the one kept.
    shared = read_ledger(store, DAG).filter(pa.compute.equal(read_ledger(store, DAG)["key"], sha256_hex("0:0")))
    assert shared["run_id"].to_pylist() == ["r0"]


def test_update_ledger_compacts_after_64_parts(tmp_path):
    write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    ledger_with_parts(store, tmp_path, 64)
    first = nightly(store, tmp_path, 1)
    assert len(live_parts(store, DAG)) == 1 and read_ledger(store, DAG).num_rows == 64 * 3 + first.metrics.documents


class Crash(Exception):
    pass


def crash_at(store, monkeypatch, step: int):
    """Make the store's `step`-th write or delete (0-based) raise, as a process killed there would."""
    calls = {"n": 0}
    for name in ("write_bytes", "delete"):
        original = getattr(store, name)

        def wrapped(*args, _original=original, **kwargs):
            calls["n"] += 1
            if calls["n"] - 1 == step:
                raise Crash(f"crash at step {step}")
            return _original(*args, **kwargs)
        monkeypatch.setattr(store, name, wrapped)


@pytest.mark.parametrize("step", range(7))  # step 0: the compacted part's write; 1..6: the deletes
def test_a_crash_at_any_step_of_compaction_loses_nothing_and_counts_nothing_twice(tmp_path, monkeypatch, step):
    store = LocalStore(tmp_path / "store")
    config = ledger_with_parts(store, tmp_path, 6)
    before, old_parts = read_ledger(store, DAG), set(live_parts(store, DAG))
    with monkeypatch.context() as patch:
        crash_at(store, patch, step)
        with pytest.raises(Crash):
            compact_ledger(store, DAG, max_parts=5)
    live = set(live_parts(store, DAG))
    assert live == old_parts if step == 0 else len(live) == 1 and live.isdisjoint(old_parts)
    assert read_ledger(store, DAG).equals(before)
    assert raw_rows(store) == (6 * 3 + 5 if step == 0 else 18)  # the leftovers are not read
    assert not [k for k in store.list(ledger_prefix(DAG)) if "/." in k]  # no temp file left behind

    # The next run writes its part and compacts again (whatever the count): one part, nothing lost.
    write_part(store, RunRef(dag_id=DAG, run_id="r6"), facts(6, config))
    compact_ledger(store, DAG, max_parts=1 if step == 0 else 5)
    after = read_ledger(store, DAG)
    assert after.num_rows == 21 and after.slice(0, 0).schema == LEDGER
    assert len(store.list(ledger_prefix(DAG))) == (1 if step == 0 else 2)  # leftovers deleted
    assert raw_rows(store) == 21


def test_a_retried_run_part_after_compaction_is_not_read_twice(tmp_path):
    write_good_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    run, config = RunRef(dag_id=DAG, run_id="scheduled__1"), make_config(tmp_path, source=str(tmp_path / "src"))
    manifest = extract(store, run, config)
    first = update_ledger(store, run, manifest, config, compact_after=0)  # written, then compacted
    assert len(live_parts(store, DAG)) == 1 and first.compaction.compacted_parts == 1
    with pytest.MonkeyPatch.context() as patch:  # the retry's housekeeping crashes before it deletes
        patch.setattr("bonito_tasks.ledger.compact_ledger", lambda *a, **k: {})
        update_ledger(store, run, manifest, config)
    assert len(store.list(ledger_prefix(DAG))) == 2 and len(live_parts(store, DAG)) == 1
    assert raw_rows(store) == first.recorded
    update_ledger(store, run, manifest, config)  # the next call deletes the covered copy
    assert len(store.list(ledger_prefix(DAG))) == 1


def test_a_reader_survives_a_compaction_that_deletes_what_it_listed(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    config = ledger_with_parts(store, tmp_path, 4)
    before = read_ledger(store, DAG)
    read_bytes = store.read_bytes
    state = {"compacted": False}

    def racing(key):
        if not state["compacted"]:  # between the reader's listing and its first read
            state["compacted"] = True
            monkeypatch.setattr(store, "read_bytes", read_bytes)
            compact_ledger(store, DAG, max_parts=0)
            monkeypatch.setattr(store, "read_bytes", racing)
        return read_bytes(key)

    monkeypatch.setattr(store, "read_bytes", racing)
    assert len(load_ledger(store, DAG, config)) == 12
    assert state["compacted"] and read_ledger(store, DAG).equals(before)


def test_ledger_in_s3_store(tmp_path, s3_bucket):
    bucket, kwargs = s3_bucket
    write_good_corpus(tmp_path / "src")
    (tmp_path / "src" / "broken.pdf").write_bytes(b"junk")
    store = S3Store(f"s3://{bucket}/store", **kwargs)
    assert nightly(store, tmp_path, 1).metrics.documents == 6
    second = nightly(store, tmp_path, 2)
    assert second.metrics.documents == 0 and second.metrics.skipped_rejects == 1
    ledger_with_parts(store, tmp_path, 3)
    before = read_ledger(store, DAG)
    compact_ledger(store, DAG, max_parts=2)
    assert len(store.list(ledger_prefix(DAG))) == 1 and read_ledger(store, DAG).equals(before)
    assert nightly(store, tmp_path, 3).metrics.documents == 0


def test_generate_prompts_only_the_pending_task_types(tmp_path):
    """Through chunk and generate (an engine that answers in Bonito's format; no vLLM): a known
    document gets the new task type only, a new document every task type of the run."""
    from bonito_tasks.chunk import chunk
    from bonito_tasks.generate.engine import Completion
    from bonito_tasks.generate.run import generate_shard

    class Answering:
        def prompt_tokens(self, prompts):
            return [len(p) // 8 for p in prompts]

        def stream(self, prompts, sampling_params, flush_every):
            yield [(i, [Completion("What does it say?<|pipe|>It says so.", 8)]) for i in prompts]

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "old.txt").write_text("The tenant pays the rent on the first day of every month. " * 3)
    store = LocalStore(tmp_path / "store")
    nightly(store, tmp_path, 1, task_types=["exqa"])
    (tmp_path / "src" / "new.txt").write_text("The landlord repairs the heating within three days of notice. " * 3)
    run = RunRef(dag_id=DAG, run_id="scheduled__2")
    config = make_config(tmp_path, source=str(tmp_path / "src"), task_types=["exqa", "ynqa"],
                         quality_filters=False)  # short repetitive test texts: not what this test is about
    documents = extract(store, run, config)
    chunks = chunk(store, run, config, documents)
    generated = generate_shard(store, run, config, chunks, 0, engine=Answering())

    docs = store.read_table(documents, "documents").to_pylist()
    name = {d["doc_id"]: d["source_uri"].rsplit("/", 1)[-1] for d in docs}
    doc_of = {c["chunk_id"]: c["doc_id"] for c in store.read_table(chunks, "chunks").to_pylist()}
    prompted: dict[str, set[str]] = {}
    for table in ("examples", "dropped_generations"):  # every prompt ends in one of them
        for row in store.read_table(generated, table).to_pylist():
            prompted.setdefault(name[doc_of[row["chunk_id"]]], set()).add(row["task_type"])
    assert prompted == {"old.txt": {"ynqa"}, "new.txt": {"exqa", "ynqa"}}
    assert generated.metrics.prompts == 3  # one chunk each: 1 + 2 task types
