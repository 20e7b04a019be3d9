"""Failures a retry cannot fix are PermanentFailures, raised before any work: a missing source, an
unwritable store, a model_id path that does not exist. The summary still comes out when the store
cannot be written."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from unittest import mock

import boto3
import pytest
from botocore.stub import Stubber

from bonito_tasks.contracts import RunRef
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.extract.sources import SourceAccessDenied, SourceNotFound, iter_source
from bonito_tasks.model_ref import ModelNotFound, check_model_reachable
from bonito_tasks.store import LocalStore, S3Store, StoreNotWritable
from conftest import TINY_MODEL, make_config

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-01-01T00:00:00+00:00")


# ---- A missing source


def test_missing_local_source_is_permanent(tmp_path):
    missing = tmp_path / "no" / "such" / "docs"
    with pytest.raises(SourceNotFound, match="does not exist") as raised:
        list(iter_source(str(missing)))
    assert isinstance(raised.value, PermanentFailure) and str(missing) in str(raised.value)
    with pytest.raises(SourceNotFound):
        list(iter_source(f"file://{missing}"))


def test_empty_local_folder_is_not_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert list(iter_source(str(tmp_path / "empty"))) == []


def test_missing_s3_bucket_is_permanent(s3_bucket):
    _, kwargs = s3_bucket
    with pytest.raises(SourceNotFound, match="bucket 'no-such-bucket-here' does not exist") as raised:
        list(iter_source("s3://no-such-bucket-here/docs/", **kwargs))
    assert isinstance(raised.value, PermanentFailure)


def test_empty_s3_prefix_is_not_an_error(s3_bucket):
    bucket, kwargs = s3_bucket
    assert list(iter_source(f"s3://{bucket}/nothing-here/", **kwargs)) == []


@pytest.mark.parametrize("code, status", [("AccessDenied", 403), ("InvalidAccessKeyId", 403)])
def test_s3_access_denied_is_permanent(code, status):
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=status)
        with pytest.raises(SourceAccessDenied, match="access denied") as raised:
            list(iter_source("s3://private-bucket/docs/", client=client))
    assert isinstance(raised.value, PermanentFailure)


def test_transient_s3_listing_error_stays_retryable():
    from botocore.exceptions import ClientError

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code="SlowDown", http_status_code=503)
        with pytest.raises(ClientError) as raised:
            list(iter_source("s3://bucket/docs/", client=client))
    assert not isinstance(raised.value, PermanentFailure)


def test_extract_of_a_missing_source_fails_without_retries(tmp_path):
    from bonito_tasks.extract import extract

    config = make_config(tmp_path, source=str(tmp_path / "missing"))
    with pytest.raises(PermanentFailure, match="does not exist"):
        extract(LocalStore(tmp_path / "store"), RUN, config)


# ---- An unwritable store


def test_probe_of_a_store_whose_root_is_a_file(tmp_path):
    """A root that is a regular file cannot hold anything, even for root (chmod does not stop root)."""
    root = tmp_path / "store-is-a-file"
    root.write_text("not a folder")
    with pytest.raises(StoreNotWritable, match="is not writable") as raised:
        LocalStore(root).probe_writable()
    assert isinstance(raised.value, PermanentFailure) and str(root) in str(raised.value)


def test_probe_of_a_writable_store_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.probe_writable()
    assert store.list("") == [] and list((tmp_path / "store").iterdir()) == []


def test_probe_of_a_missing_bucket(s3_bucket):
    _, kwargs = s3_bucket
    store = S3Store("s3://no-such-store-bucket/runs", **kwargs)
    with pytest.raises(StoreNotWritable, match="s3://no-such-store-bucket/runs is not writable: NoSuchBucket"):
        store.probe_writable()


def test_probe_of_an_s3_store(s3_bucket):
    bucket, kwargs = s3_bucket
    store = S3Store(f"s3://{bucket}/runs", **kwargs)
    store.probe_writable()
    assert store.list("") == []


def test_transient_s3_error_in_the_probe_stays_retryable():
    from botocore.exceptions import ClientError

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
        with pytest.raises(ClientError) as raised:
            S3Store("s3://bucket/runs", client=client).probe_writable()
    assert not isinstance(raised.value, PermanentFailure)


def test_extract_probes_the_store_before_reading_the_source(tmp_path):
    """With an unwritable store, extract fails without retries before it lists or reads anything."""
    from bonito_tasks.extract import extract

    root = tmp_path / "store-is-a-file"
    root.write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Some text that would be read. " * 10)
    config = make_config(tmp_path, source=str(tmp_path / "docs"), store=str(root))
    with mock.patch("bonito_tasks.extract.sources._iter_local", side_effect=AssertionError("source listed")):
        with pytest.raises(StoreNotWritable):
            extract(LocalStore(root), RUN, config)


def test_summary_is_returned_and_logged_when_the_store_cannot_be_written(tmp_path, caplog):
    from bonito_tasks.summary import run_summary

    root = tmp_path / "store-is-a-file"
    root.write_text("")
    caplog.set_level(logging.WARNING, logger="bonito_tasks.summary")
    summary = run_summary(LocalStore(root), RUN, make_config(tmp_path, store=str(root)))
    assert summary.run_id == RUN.run_id and summary.stages["extract"] == "not committed"
    assert "could not write the run summary" in caplog.text and "summary.json" in caplog.text


def test_summary_of_a_missing_bucket_is_still_returned(s3_bucket, caplog, tmp_path):
    from bonito_tasks.summary import run_summary

    _, kwargs = s3_bucket
    store = S3Store("s3://no-such-summary-bucket/x", **kwargs)
    caplog.set_level(logging.WARNING, logger="bonito_tasks.summary")
    summary = run_summary(store, RUN, make_config(tmp_path, store="s3://no-such-summary-bucket/x"))
    assert summary.stages["publish"] == "not committed" and "NoSuchBucket" in caplog.text


@pytest.mark.airflow
def test_summary_operator_pushes_and_logs_its_summary_when_the_store_cannot_be_written(tmp_path, caplog, capsys):
    from bonito_airflow.operators import BonitoSummaryOperator

    root = tmp_path / "store-is-a-file"
    root.write_text("")
    ti = mock.Mock(dag_id=RUN.dag_id, run_id=RUN.run_id)
    ti.get_ti_count.return_value = 0
    context = {"params": {"source": "/docs", "store": str(root), "model_id": str(TINY_MODEL)},
               "dag_run": SimpleNamespace(dag_id=RUN.dag_id, run_id=RUN.run_id), "ti": ti}
    caplog.set_level(logging.INFO)
    BonitoSummaryOperator(task_id="summarize").execute(context)
    [push] = ti.xcom_push.call_args_list
    assert push.kwargs["key"] == "summary" and push.kwargs["value"]["run_id"] == RUN.run_id
    logged = caplog.text + capsys.readouterr().out  # the task logger writes through structlog
    assert f"run summary {RUN.dag_id} / {RUN.run_id}" in logged
    assert "could not write the run summary" in logged


# ---- A model_id path that does not exist


@pytest.mark.parametrize("model_id", ["/models/bonito-v1", "./bonito", "~/no-such-model-dir", "models/bonito/v1"])
def test_missing_model_path_is_named(model_id):
    with pytest.raises(ModelNotFound, match=r"does not exist \(and is not a Hub repo id\)") as raised:
        check_model_reachable(model_id)
    assert isinstance(raised.value, PermanentFailure) and model_id in str(raised.value)


@pytest.mark.parametrize("model_id", ["BatsResearch/bonito-v1", "gpt2", str(TINY_MODEL)])
def test_hub_ids_and_existing_paths_pass(model_id):
    check_model_reachable(model_id)


def test_neither_a_path_nor_a_hub_id():
    with pytest.raises(ModelNotFound, match="neither an existing local folder nor a Hub repo id"):
        check_model_reachable("bonito v1!")


def test_tokenizer_load_says_the_model_path_does_not_exist(tmp_path):
    from bonito_tasks.chunk.splitter import load_tokenizer

    missing = tmp_path / "no-model"
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_tokenizer(make_config(tmp_path, model_id=str(missing)))


def test_engine_load_says_the_model_path_does_not_exist(tmp_path):
    from bonito_tasks.generate.engine import VllmEngine

    with mock.patch.dict("sys.modules", {"vllm": None}):  # never reached: the check comes first
        with pytest.raises(ModelNotFound, match="does not exist"):
            VllmEngine(make_config(tmp_path, model_id=str(tmp_path / "no-model"))).load()
