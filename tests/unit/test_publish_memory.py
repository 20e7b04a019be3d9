"""Publish never holds the dataset in memory: a run of many validate parts is published a part and
a shard at a time, and the Hub gets the data shards from local files."""

from __future__ import annotations

import os
import tracemalloc

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DOCUMENTS, EXAMPLES, ExtractMetrics, QualitySummary, ValidateMetrics, sha256_hex
from bonito_tasks.publish import layout, publish
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from tests.unit.test_publish import RUN, SUITE, make_config

PARTS, PART_ROWS, ROWS_PER_SHARD = 12, 100, 50  # 1,200 rows: 24 shards over two task types


def make_run(store) -> tuple:
    """A validate stage of PARTS parts of rows with incompressible text (about 4 KB of Parquet a row)."""
    doc = {"doc_id": sha256_hex("doc"), "source_uri": "/docs/a.txt", "media_type": "text/plain", "size_bytes": 1,
           "text": "text", "page_starts": None}
    extract, validate = StageWriter(store, RUN, "extract"), StageWriter(store, RUN, "validate")
    extract.add("documents", pa.Table.from_pylist([doc], schema=DOCUMENTS))
    for part in range(PARTS):
        validate.add("examples", pa.Table.from_pylist([
            {"example_id": sha256_hex(f"{part}-{i}"), "task_type": ("exqa", "qa")[i % 2],
             "input": os.urandom(1500).hex(), "output": os.urandom(500).hex(), "doc_id": doc["doc_id"],
             "chunk_id": sha256_hex(f"chunk{i}"), "char_start": 0, "char_end": 10, "sample_index": 0,
             "model_id": "BatsResearch/bonito-v1", "model_revision": "abc123", "sampling_params": "{}",
             "run_id": RUN.run_id} for i in range(PART_ROWS)], schema=EXAMPLES))
    return (validate.commit(metrics=ValidateMetrics(suite=SUITE, quality=QualitySummary())),
            extract.commit(metrics=ExtractMetrics()))


def test_publish_holds_a_window_of_rows_and_one_shard_never_the_dataset(tmp_path, monkeypatch):
    warm = LocalStore(tmp_path / "warm-up")  # the modules a publish imports are not what is measured
    publish(warm, RUN, make_config(tmp_path), *make_run(warm), token=None, rows_per_shard=ROWS_PER_SHARD)
    store = LocalStore(tmp_path / "store")
    examples, documents = make_run(store)
    arrow_at_write: list[tuple[int, int]] = []  # (Arrow memory in use, the rows) as each row group is written
    with_messages = layout.with_messages

    def watched(rows):
        arrow_at_write.append((pa.total_allocated_bytes(), rows.nbytes))
        return with_messages(rows)

    monkeypatch.setattr(layout, "with_messages", watched)
    tracemalloc.start()
    try:
        manifest = publish(store, RUN, make_config(tmp_path), examples, documents, token=None,
                           rows_per_shard=ROWS_PER_SHARD)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    shards = {p: f.bytes for p, f in manifest.metrics.files.items() if p.startswith("data/")}
    assert len(shards) == PARTS * PART_ROWS // ROWS_PER_SHARD == len(arrow_at_write)
    dataset = sum(shards.values())
    assert dataset > 4_000_000
    # Python objects (bytes read and written): about a part and a shard, not the dataset's bytes.
    assert python_peak < dataset / 4, (python_peak, dataset)
    # Arrow: the row group being written (here a whole shard), its rows read from the sorted runs and
    # the runs' 24 readers (about 12 KB each): about 4-5 shards' worth at this size, never the run's 24.
    in_use, shard = max(in_use for in_use, _ in arrow_at_write), max(rows for _, rows in arrow_at_write)
    assert in_use < 6 * shard, (in_use, shard)


def test_the_hub_gets_the_data_shards_from_local_files(tmp_path, monkeypatch):
    import huggingface_hub

    from tests.hub_server import HubServer

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    sent: dict[str, object] = {}
    real = huggingface_hub.CommitOperationAdd

    def recording(path_in_repo, path_or_fileobj):
        sent[path_in_repo] = path_or_fileobj
        return real(path_in_repo, path_or_fileobj)

    monkeypatch.setattr(huggingface_hub, "CommitOperationAdd", recording)
    store = LocalStore(tmp_path / "store")
    examples, documents = make_run(store)
    with HubServer() as hub:
        config = make_config(tmp_path, hub_repo_id="org/streamed")
        manifest = publish(store, RUN, config, examples, documents, token=hub.token, endpoint=hub.url,
                           rows_per_shard=ROWS_PER_SHARD)
        files = hub.repo("org/streamed").resolve("main").files
    data = sorted(p for p in sent if p.startswith("data/"))
    assert len(data) == 24 and all(isinstance(sent[p], str) for p in data)  # a path: streamed by huggingface_hub
    assert isinstance(sent["README.md"], bytes)
    assert {p: sha256_hex(files[p]) for p in data} == {p: manifest.metrics.files[p].sha256 for p in data}


@pytest.mark.parametrize(("parts", "spill_rows", "row_group_rows"), [(1, 20_000, 10_000), (7, 20_000, 10_000),
                                                                     (7, 30, 7), (1, 45, 16)])
def test_a_streamed_snapshot_has_the_bytes_of_one_built_in_memory(tmp_path, monkeypatch, parts, spill_rows,
                                                                  row_group_rows):
    """Ties on example_id, task types spread over the parts, shard edges inside parts; sorted runs
    cut inside parts and shards of several row groups."""
    monkeypatch.setattr(layout, "SPILL_ROWS", spill_rows)
    monkeypatch.setattr(layout, "ROW_GROUP_ROWS", row_group_rows)
    monkeypatch.setattr("bonito_tasks.store.ROW_GROUP_ROWS", row_group_rows)  # the in-memory shards' (parquet_bytes)
    rows = pa.Table.from_pylist([
        {"example_id": f"{(i * 7919) % 97:03d}", "task_type": ("exqa", "qa", "ynqa")[i % 3], "input": f"in {i}",
         "output": f"out {i}", "doc_id": "d", "chunk_id": "c", "char_start": 0, "char_end": 1, "sample_index": 0,
         "model_id": "m", "model_revision": "r", "sampling_params": "{}", "run_id": "run"} for i in range(500)],
        schema=EXAMPLES)
    size = -(-rows.num_rows // parts)
    streamed = layout.write_splits((rows.slice(i, size) for i in range(0, rows.num_rows, size)), tmp_path, 40)
    in_memory = layout.task_splits(rows, 40)
    assert [(s.task_type, s.rows, s.num_bytes, list(s.shards)) for s in streamed] == [
        (s.task_type, s.rows, s.num_bytes, list(s.shards)) for s in in_memory]
    assert all(s.shards[p].read_bytes() == m.shards[p] for s, m in zip(streamed, in_memory) for p in s.shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the sorted runs are gone


def test_lfs_blobs_uploaded_before_a_commit_that_fails_leave_the_dataset_as_it_was(tmp_path, monkeypatch):
    """The Hub's way: each shard goes up from its file as an LFS blob, then one commit names them. A
    commit that fails after the blobs went up changes nothing; the retry commits once and does not
    upload the blobs again."""
    from bonito_tasks.publish import PublishError
    from bonito_tasks.retry import RetryPolicy
    from tests.hub_server import HubServer

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    store = LocalStore(tmp_path / "store")
    examples, documents = make_run(store)
    config = make_config(tmp_path, hub_repo_id="org/lfs")
    options = dict(token=None, retry=RetryPolicy(attempts=1, timeout_s=10), rows_per_shard=ROWS_PER_SHARD)
    with HubServer(lfs=True) as hub:
        options |= dict(token=hub.token, endpoint=hub.url)
        hub.fail("POST", r"/commit/", status=500)
        with pytest.raises(PublishError):
            publish(store, RUN, config, examples, documents, **options)
        repo = hub.repo("org/lfs")
        assert len(hub.lfs_objects) == 24 and len(repo.history()) == 1  # blobs up, no commit: the repo as created
        uploads = hub.count("PUT", r"^/lfs-upload/")
        manifest = publish(store, RUN, config, examples, documents, **options)  # Airflow's retry
        assert len(repo.history()) == 2 and manifest.metrics.hub_new_commit  # one commit
        assert hub.count("PUT", r"^/lfs-upload/") == uploads  # the blobs were there already
        files = repo.resolve("main").files
    shards = [p for p in manifest.metrics.files if p.startswith("data/")]
    assert len(shards) == 24
    assert all(sha256_hex(files[p]) == manifest.metrics.files[p].sha256 for p in shards)
