"""Publish's S3 export against a real S3-protocol server (moto on loopback): the dataset files and
card under a prefix, stale shards removed, and append for teams without the Hub."""

from __future__ import annotations

import io

import boto3
import pyarrow.parquet as pq

from bonito_tasks.publish import publish
from bonito_tasks.store import LocalStore
from tests.unit.test_publish import RUN, make_config, make_inputs

PREFIX = "exports/contracts-qa"


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
    exported = s3_objects(*s3_bucket)
    dataset_key = store.key(manifest.metrics.dataset_uri)
    assert exported == {path: store.read_bytes(f"{dataset_key}/{path}") for path in manifest.metrics.files}
    assert manifest.metrics.export_uri == f"s3://{s3_bucket[0]}/{PREFIX}"
    assert exported["README.md"].startswith(b"---\n") and manifest.metrics.hub_url is None
    assert sum(pq.read_table(io.BytesIO(d)).num_rows for p, d in exported.items() if p.endswith(".parquet")) == 6


def test_overwrite_export_removes_stale_shards(tmp_path, s3_bucket):
    export_run(tmp_path, s3_bucket, "a")
    export_run(tmp_path, s3_bucket, "b", task_types=("exqa",))
    assert sorted(p for p in s3_objects(*s3_bucket) if p.startswith("data/")) == [
        "data/exqa/train-00000-of-00001.parquet"
    ]


def test_append_to_an_export_adds_each_row_once(tmp_path, s3_bucket):
    night1 = RUN.model_copy(update={"run_id": "scheduled__night1"})
    night2 = RUN.model_copy(update={"run_id": "scheduled__night2"})
    export_run(tmp_path, s3_bucket, "n1", run=night1, mode="append", rows=range(0, 3))
    _, second = export_run(tmp_path, s3_bucket, "n2", run=night2, mode="append", rows=range(2, 5))
    exported = s3_objects(*s3_bucket)
    rows = sum(pq.read_table(io.BytesIO(d)).num_rows for p, d in exported.items() if p.endswith(".parquet"))
    assert rows == second.metrics.examples == 10 and second.metrics.duplicates_skipped == 2
    assert b"num_examples: 10" in exported["README.md"]
