"""One suite for both stores: a local folder and S3 (moto in server mode on loopback)."""

import pytest

from bonito_tasks.store import LocalStore, S3Store, StoreError, open_store, parse_s3_uri


@pytest.fixture
def store(any_store):
    return any_store


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


def test_write_file_and_copy_make_whole_objects(store, tmp_path):
    """A part streamed from a local file, and an object copied within the store (S3: server-side)."""
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "part.bin").write_bytes(data)
    assert store.write_file("parts/one.bin", tmp_path / "part.bin") == store.uri("parts/one.bin")
    store.copy("parts/one.bin", "snapshots/s/one.bin")
    store.write_bytes("parts/one.bin", b"replaced")  # the copy is its own object
    assert store.read_bytes("snapshots/s/one.bin") == data and store.read_bytes("parts/one.bin") == b"replaced"
    assert store.list("snapshots") == ["snapshots/s/one.bin"]  # no temporary file left beside it


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


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket//a/b") == ("bucket", "a/b")
    for bad in ("s3://", "s3:///prefix", "gs://bucket/prefix", "/local/path", "bucket/prefix"):
        with pytest.raises(StoreError, match="not an s3://bucket"):
            parse_s3_uri(bad)
    store = S3Store("s3://bucket/a/b/", client=object())
    assert (store.bucket, store.prefix, store.root_uri) == ("bucket", "a/b/", "s3://bucket/a/b")
