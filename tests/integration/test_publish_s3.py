"""Publish's S3 export against a real S3-protocol server (moto on loopback): complete snapshots
under the prefix and a pointer written last (a reader never sees a partial export, even when the
export dies half-way), old snapshots removed, and append for teams without the Hub."""

from __future__ import annotations

import io

import boto3
import pyarrow.parquet as pq
import pytest

from bonito_tasks.publish import publish, read_export
from bonito_tasks.store import LocalStore, S3Store
from tests.unit.test_publish import RUN, make_config, make_inputs

PREFIX = "exports/contracts-qa"


def exported(bucket: str, kwargs: dict) -> dict[str, bytes]:
    """The export as a reader following the documented protocol sees it (the pointer, then its snapshot)."""
    return read_export(S3Store(f"s3://{bucket}/{PREFIX}", **kwargs))


def s3_objects(bucket: str, kwargs: dict) -> dict[str, bytes]:
    client = boto3.client("s3", **kwargs)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/").get("Contents", [])]
    return {k[len(PREFIX) + 1:]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def export_run(tmp_path, s3_bucket, name: str, run=RUN, **inputs_kwargs):
    bucket, kwargs = s3_bucket
    store = LocalStore(tmp_path / name)
    config = make_config(tmp_path, export_s3_uri=f"s3://{bucket}/{PREFIX}",
                         publish_mode=inputs_kwargs.pop("mode", "overwrite"))
    manifest = publish(store, run, config, *make_inputs(store, run=run, **inputs_kwargs), token=None,
                       s3_client_kwargs=kwargs)
    return store, manifest


def test_export_holds_the_dataset_files_and_card(tmp_path, s3_bucket):
    store, manifest = export_run(tmp_path, s3_bucket, "a")
    files = exported(*s3_bucket)
    dataset_key = store.key(manifest.metrics.dataset_uri)
    assert files == {path: store.read_bytes(f"{dataset_key}/{path}") for path in manifest.metrics.files}
    assert manifest.metrics.export_uri == f"s3://{s3_bucket[0]}/{PREFIX}"
    snapshot = manifest.metrics.export_snapshot_uri
    assert snapshot.startswith(f"s3://{s3_bucket[0]}/{PREFIX}/snapshots/")
    # Everything is under the snapshot, except the pointer, written last.
    assert sorted(s3_objects(*s3_bucket)) == sorted(
        ["_latest.json"] + [f"{snapshot.split(PREFIX + '/', 1)[1]}/{p}" for p in files])
    assert files["README.md"].startswith(b"---\n") and manifest.metrics.hub_url is None
    assert b"_latest.json" in files["README.md"]  # the card says how to read the export
    assert sum(pq.read_table(io.BytesIO(d)).num_rows for p, d in files.items() if p.endswith(".parquet")) == 6


def test_export_snapshot_loads_with_datasets(tmp_path, s3_bucket):
    """The snapshot the pointer names is a complete dataset folder (here copied down, as a reader would)."""
    import datasets

    export_run(tmp_path, s3_bucket, "a")
    folder = tmp_path / "download"
    for path, data in exported(*s3_bucket).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    assert datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache")).num_rows == 6


def test_overwrite_export_removes_stale_shards(tmp_path, s3_bucket):
    export_run(tmp_path, s3_bucket, "a")
    export_run(tmp_path, s3_bucket, "b", task_types=("exqa",))
    export_run(tmp_path, s3_bucket, "c", task_types=("qa",))
    assert sorted(p for p in exported(*s3_bucket) if p.startswith("data/")) == ["data/qa/train-00000-of-00001.parquet"]
    # The snapshot before the current one stays (a reader may still be reading it); older ones go.
    snapshots = {key.split("/")[1] for key in s3_objects(*s3_bucket) if key.startswith("snapshots/")}
    assert len(snapshots) == 2


@pytest.mark.parametrize("fail_after", [0, 2, 4])  # 4: every file written, the pointer not
def test_export_that_dies_half_way_leaves_the_previous_export_whole(tmp_path, s3_bucket, monkeypatch, fail_after):
    """A fault injected after some objects of the second export were written: a reader following
    the protocol sees the first export, whole, never a mix; the retry completes the second."""
    store_a, first = export_run(tmp_path, s3_bucket, "a")
    before = exported(*s3_bucket)
    assert sorted(before) == sorted(first.metrics.files)
    real_write, writes = S3Store.write_bytes, []

    def dying_write(self, key, data):
        if len(writes) >= fail_after:
            raise ConnectionError("injected: the worker lost the network mid-export")
        writes.append(key)
        return real_write(self, key, data)

    monkeypatch.setattr(S3Store, "write_bytes", dying_write)
    with pytest.raises(ConnectionError):
        export_run(tmp_path, s3_bucket, "b", task_types=("exqa",))
    assert exported(*s3_bucket) == before  # the previous export, whole
    assert len(writes) == fail_after and "_latest.json" not in writes

    monkeypatch.setattr(S3Store, "write_bytes", real_write)
    _, second = export_run(tmp_path, s3_bucket, "b", task_types=("exqa",))  # Airflow's retry
    after = exported(*s3_bucket)
    assert sorted(p for p in after if p.startswith("data/")) == ["data/exqa/train-00000-of-00001.parquet"]
    assert second.metrics.export_snapshot_uri != first.metrics.export_snapshot_uri


def test_an_export_in_the_older_layout_is_appended_to_and_replaced(tmp_path, s3_bucket):
    """Exports written before the pointer held the dataset directly under the prefix: append reads
    them, and the first snapshot export removes them."""
    bucket, kwargs = s3_bucket
    night1 = RUN.model_copy(update={"run_id": "scheduled__night1"})
    store, first = export_run(tmp_path, s3_bucket, "n1", run=night1, mode="append", rows=range(0, 3))
    client = boto3.client("s3", **kwargs)
    for key in [k for k in s3_objects(bucket, kwargs)]:  # rewrite it in the older layout
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
    dataset_key = store.key(first.metrics.dataset_uri)
    for path in [p for p in first.metrics.files if not p.startswith(".bonito/")]:  # it predates the index too
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{path}", Body=store.read_bytes(f"{dataset_key}/{path}"))

    night2 = RUN.model_copy(update={"run_id": "scheduled__night2"})
    _, second = export_run(tmp_path, s3_bucket, "n2", run=night2, mode="append", rows=range(2, 5))
    assert second.metrics.examples == 10 and second.metrics.duplicates_skipped == 2
    assert all(key == "_latest.json" or key.startswith("snapshots/") for key in s3_objects(bucket, kwargs))


def test_append_to_an_export_adds_each_row_once(tmp_path, s3_bucket):
    night1 = RUN.model_copy(update={"run_id": "scheduled__night1"})
    night2 = RUN.model_copy(update={"run_id": "scheduled__night2"})
    export_run(tmp_path, s3_bucket, "n1", run=night1, mode="append", rows=range(0, 3))
    _, second = export_run(tmp_path, s3_bucket, "n2", run=night2, mode="append", rows=range(2, 5))
    files = exported(*s3_bucket)
    rows = sum(pq.read_table(io.BytesIO(d)).num_rows for p, d in files.items() if p.startswith("data/"))
    assert rows == second.metrics.examples == 10 and second.metrics.duplicates_skipped == 2
    assert b"num_examples: 10" in files["README.md"]
    # Night 2 wrote only its own shards; night 1's were copied within the bucket into its snapshot.
    assert sorted(p for p in second.metrics.files if p.startswith("data/")) == [
        f"data/{t}/train-scheduled__night2-00000-of-00001.parquet" for t in ("exqa", "qa")]
    assert "data/qa/train-scheduled__night1-00000-of-00001.parquet" in files


def test_an_append_that_adds_nothing_leaves_the_export_as_it_is(tmp_path, s3_bucket):
    night1 = RUN.model_copy(update={"run_id": "scheduled__night1"})
    export_run(tmp_path, s3_bucket, "n1", run=night1, mode="append", rows=range(0, 3))
    before = s3_objects(*s3_bucket)
    _, again = export_run(tmp_path, s3_bucket, "n2", run=RUN.model_copy(update={"run_id": "scheduled__night2"}),
                          mode="append", rows=range(0, 3))
    assert again.metrics.examples_added == 0 and s3_objects(*s3_bucket) == before
