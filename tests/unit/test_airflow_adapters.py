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


def _constraints(schema: dict) -> dict:
    """The validation keywords of a pydantic property schema (Optional's anyOf flattened)."""
    out = {}
    for part in [*schema.get("anyOf", []), schema]:
        out.update({k: v for k, v in part.items() if k not in ("title", "default", "description", "anyOf", "type")})
    return out


@pytest.mark.parametrize("name", list(RunConfig.model_fields))
def test_the_form_carries_every_bound_of_the_field(name):
    """Every keyword RunConfig's JSON schema constrains a field with is in that field's Param."""
    from bonito_airflow.params import run_params

    param = run_params(source="/docs", store="/store")[name]
    constraints = _constraints(RunConfig.model_json_schema()["properties"][name])
    if name == "task_types":  # the form lists the names RunConfig's validator accepts
        assert constraints.pop("items") == {"type": "string"} and param.schema["items"]["type"] == "string"
    assert {k: param.schema.get(k) for k in constraints} == constraints


def _outside(schema: dict):
    """Values just past each bound of a Param schema (None when it has none)."""
    if "minimum" in schema:
        yield schema["minimum"] - 1
    if "exclusiveMinimum" in schema:
        yield schema["exclusiveMinimum"]
    if "maximum" in schema:
        yield schema["maximum"] + 1
    if "exclusiveMaximum" in schema:
        yield schema["exclusiveMaximum"]
    if "enum" in schema:
        yield "not-an-option"
    if schema.get("minLength"):
        yield ""
    if schema.get("minItems"):
        yield []


def test_what_the_form_refuses_runconfig_refuses_and_the_other_way_round():
    """For every bound of every field: a value just outside it fails the form's validation (as on
    trigger) and RunConfig; the issue's own examples included."""
    from airflow.sdk.exceptions import ParamValidationError
    from pydantic import ValidationError

    from bonito_airflow.params import run_params

    params = run_params(source="/docs", store="/store")
    base = {name: param.value for name, param in params.items()}
    probed = 0
    for name, param in params.items():
        for value in _outside(param.schema):
            with pytest.raises(ParamValidationError):
                param.resolve(value)
            with pytest.raises(ValidationError):
                RunConfig(**(base | {name: value}))
            probed += 1
    assert probed >= 40
    for blank in ("", "   "):  # an empty or blank source: refused by the form, not only inside a task
        with pytest.raises(ParamValidationError):
            params["source"].resolve(blank)
    # Rules between params are not a Param's to check: the form takes these, check_params refuses them.
    for conflict in ({"max_tokens": 1000}, {"chunk_overlap_tokens": 600}, {"chunk_max_tokens": 2000}):
        [(name, value)] = conflict.items()
        assert params[name].resolve(value) == value
        with pytest.raises(ValidationError, match="params_conflict|exceeds|under half|no room"):
            RunConfig(**(base | conflict))


def test_env_defaults_of_the_form():
    from bonito_airflow.params import env_defaults

    assert env_defaults({}, "/home/af") == {"source": "", "store": "/home/af/bonito-store",
                                            "model_id": "BatsResearch/bonito-v1"}
    assert env_defaults({"BONITO_SOURCE": "s3://d/", "BONITO_STORE": "s3://s", "BONITO_MODEL": "m"}, "/x") == {
        "source": "s3://d/", "store": "s3://s", "model_id": "m"}


def test_gpu_slots_defaults_to_the_gpu_pool_size():
    """BONITO_GPU_SLOTS sizes pool `gpu` and is gpu_slots' default: a first run on 8 GPUs plans 8 shards."""
    from bonito_airflow.params import env_defaults, run_params
    from bonito_tasks.config import ConfigRejected

    assert run_params(**env_defaults({"BONITO_GPU_SLOTS": "8"}, "/x"))["gpu_slots"].value == 8
    assert run_params(**env_defaults({"BONITO_GPU_SLOTS": ""}, "/x"))["gpu_slots"].value == 1
    assert run_params(**env_defaults({}, "/x"))["gpu_slots"].value == 1
    for bad in ("eight", "0", "-2"):
        with pytest.raises(ConfigRejected, match=f"BONITO_GPU_SLOTS='{bad}'"):
            env_defaults({"BONITO_GPU_SLOTS": bad}, "/x")
