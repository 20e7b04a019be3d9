"""Hooks and params of plugins/bonito_airflow, with connections defined the Airflow way (AIRFLOW_CONN_*)."""

import json

import pytest

from bonito_tasks.config import RunConfig
from bonito_tasks.task_types import TASK_TYPES

pytestmark = pytest.mark.airflow


def test_s3_hook_maps_connection_to_boto3_kwargs(monkeypatch):
    from bonito_airflow.hooks import S3ConnectionHook

    monkeypatch.setenv("AIRFLOW_CONN_MINIO", json.dumps({
        "conn_type": "aws", "login": "key-id", "password": "secret",
        "extra": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}}))
    assert S3ConnectionHook("minio").client_kwargs() == {
        "aws_access_key_id": "key-id", "aws_secret_access_key": "secret",
        "endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}
    assert S3ConnectionHook("no_such_connection").client_kwargs() == {}  # boto3's default chain


def test_hf_hook_prefers_connection_then_env(monkeypatch):
    from bonito_airflow.hooks import HuggingFaceHook

    monkeypatch.setenv("HF_TOKEN", "env-token")
    assert HuggingFaceHook("missing_conn").get_token() == "env-token"
    monkeypatch.setenv("AIRFLOW_CONN_HF_TEST", json.dumps({"conn_type": "huggingface", "password": "conn-token"}))
    assert HuggingFaceHook("hf_test").get_token() == "conn-token"
    monkeypatch.delenv("HF_TOKEN")
    assert HuggingFaceHook("missing_conn").get_token() is None


def test_params_mirror_run_config():
    from bonito_airflow.params import run_params

    params = run_params(source="/docs", store="/store")
    assert set(params) == set(RunConfig.model_fields)
    assert params["temperature"].value == 0.5 and params["temperature"].schema["minimum"] == 0
    assert params["task_types"].schema["items"]["enum"] == [*TASK_TYPES, *TASK_TYPES.values()]
    assert params["hub_repo_id"].schema["type"] == ["string", "null"]
    assert params["dtype"].schema["enum"] == ["auto", "float16", "bfloat16", "float32"]
    for param in params.values():
        assert param.description
    # The form's defaults make a valid config.
    RunConfig(**{name: param.resolve() for name, param in params.items()})


def test_form_accepts_short_and_full_task_type_names():
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    from bonito_airflow.params import run_params

    schema = run_params(source="/docs", store="/store")["task_types"].schema
    chosen = ["extractive question answering", "nli", "yes-no question answering"]
    value = Param(chosen, **schema).resolve()  # the form's validation, as on trigger
    assert RunConfig(source="/docs", store="/store", task_types=value).task_types == ["exqa", "nli", "ynqa"]
    for wrong in (["no such task"], []):
        with pytest.raises(ParamValidationError):
            Param(wrong, **schema).resolve()
