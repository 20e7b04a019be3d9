"""One suite for both stores: a local folder and S3 (moto in server mode on loopback)."""

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DOCUMENTS, RunRef
from bonito_tasks.store import LocalStore, S3Store, StageWriter, StoreError, open_store

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-11-25T10:00:00+00:00")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket, kwargs = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/artifacts", **kwargs)


def docs_table(n: int) -> pa.Table:
    return pa.Table.from_pylist(
        [{"doc_id": f"{i:064x}", "source_uri": f"/d/{i}.txt", "media_type": "text/plain", "size_bytes": 3,
          "text": f"doc {i}", "page_starts": None} for i in range(n)],
        DOCUMENTS,
    )


def test_bytes_roundtrip_list_and_delete(store):
    store.write_bytes("a/b/one.bin", b"1")
    store.write_bytes("a/b/two.bin", b"22")
    store.write_bytes("a/c.bin", b"3")
    store.write_bytes("a/b/one.bin", b"one")  # overwrite replaces whole
    assert store.read_bytes("a/b/one.bin") == b"one"
    assert store.exists("a/c.bin") and not store.exists("a/missing")
    assert store.list("a/b") == ["a/b/one.bin", "a/b/two.bin"]
    assert store.delete_prefix("a/b") == 2
    assert store.list("a") == ["a/c.bin"]
    store.delete("a/c.bin")
    store.delete("a/c.bin")  # deleting what is gone is fine
    assert store.list("a") == []


def test_stage_commit_and_read_back(store):
    writer = StageWriter(store, RUN, "extract")
    assert writer.committed() is None
    writer.begin()
    writer.add("documents", docs_table(3))
    writer.add("documents", docs_table(2))
    manifest = writer.commit(config_sha256="c" * 64, counts={"rejects": 0})
    assert manifest.uri == store.uri("bonito_dataset/manual__2026-11-25T10_00_00_00_00/extract/_manifest.json")
    assert manifest.counts == {"documents": 5, "rejects": 0}
    reread = store.read_manifest(manifest.uri)
    assert reread == manifest
    table = store.read_table(reread, "documents")
    assert table.num_rows == 5 and table.schema == DOCUMENTS
    assert store.read_shard(reread, "documents", 1).num_rows == 2


def test_manifest_written_last_and_retry_starts_clean(store):
    writer = StageWriter(store, RUN, "chunk")
    writer.begin()
    writer.add("documents", docs_table(1))
    # The attempt dies here: shards exist, the manifest does not, so nothing is committed.
    assert writer.committed() is None
    retry = StageWriter(store, RUN, "chunk")
    retry.begin()
    assert store.list(retry.prefix) == []
    retry.add("documents", docs_table(4))
    manifest = retry.commit(config_sha256="c" * 64)
    assert [s.path for s in manifest.shards] == ["part-00000.documents.parquet"]
    assert StageWriter(store, RUN, "chunk").reusable("c" * 64) == manifest
    assert StageWriter(store, RUN, "chunk").reusable("d" * 64) is None


def test_corrupted_shard_is_detected(store):
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    writer.add("documents", docs_table(1))
    manifest = writer.commit(config_sha256="c" * 64)
    store.write_bytes(f"{writer.prefix}/part-00000.documents.parquet", b"garbage")
    with pytest.raises(StoreError, match="sha256"):
        store.read_table(manifest, "documents")


def test_local_store_rejects_escaping_keys(tmp_path):
    with pytest.raises(StoreError, match="escapes"):
        LocalStore(tmp_path).write_bytes("../outside", b"x")


def test_local_write_is_atomic_on_failure(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("k", b"old")

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        store.write_bytes("k", b"new")
    assert store.read_bytes("k") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp file left


def test_open_store_picks_backend(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store("s3://bucket/prefix", region_name="us-east-1"), S3Store)
