"""The DAG's trigger-form params, derived from RunConfig so the two never drift apart.

Every JSON-schema keyword pydantic writes for a field (type, bounds, lengths, pattern, enum, item
types) goes into its Param, so the form refuses what RunConfig's field validation refuses. Rules
between fields (chunk + prompt + max_tokens within max_model_len, overlap under half a chunk) cannot
be written in a Param's schema: the DAG's first task, check_params, checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from bonito_airflow.schedule import parse_settings
from bonito_tasks.config import DEFAULT_MODEL, ConfigRejected, RunConfig
from bonito_tasks.task_types import TASK_TYPES

# The form offers every task type by its short name, then by its full name (as Bonito was trained on it).
TASK_TYPE_NAMES = [*TASK_TYPES, *TASK_TYPES.values()]
# Keywords that describe a field rather than constrain it; everything else is carried into the Param.
_NOT_CONSTRAINTS = ("title", "default", "description", "anyOf", "type")
# The environment variables that set a param's default when the DAG is parsed.
ENV_DEFAULTS = {"source": "BONITO_SOURCE", "store": "BONITO_STORE", "model_id": "BONITO_MODEL",
                "gpu_slots": "BONITO_GPU_SLOTS"}
# A deployment's own defaults for any params: a JSON object of RunConfig fields (`make ui` sets the tiny model's).
FORM_DEFAULTS_VAR = "BONITO_FORM_DEFAULTS"


def env_defaults(environ: Mapping[str, str], airflow_home: Path | str) -> dict[str, Any]:
    """The defaults the environment sets: `source` ($BONITO_SOURCE, else empty: the form asks for
    it), `store` ($BONITO_STORE, else $AIRFLOW_HOME/bonito-store), `model_id` ($BONITO_MODEL),
    `gpu_slots` ($BONITO_GPU_SLOTS, when set), then
    the params of $BONITO_FORM_DEFAULTS (ConfigRejected names invalid JSON or an unknown field)."""
    return {
        "source": environ.get(ENV_DEFAULTS["source"], ""),
        "store": environ.get(ENV_DEFAULTS["store"]) or f"{airflow_home}/bonito-store",
        "model_id": environ.get(ENV_DEFAULTS["model_id"]) or DEFAULT_MODEL,
    } | gpu_slots_default(environ) | parse_settings(environ.get(FORM_DEFAULTS_VAR), FORM_DEFAULTS_VAR)


def gpu_slots_default(environ: Mapping[str, str]) -> dict[str, int]:
    """`gpu_slots` from $BONITO_GPU_SLOTS, the size of pool `gpu` (airflow-init and `make demo` create
    the pool from it), so that a first run on 8 GPUs plans at least 8 shards with no param set;
    unset or empty: RunConfig's default, 1."""
    name = ENV_DEFAULTS["gpu_slots"]
    value = environ.get(name, "").strip()
    if not value:
        return {}
    if not value.isdigit() or int(value) < 1:
        raise ConfigRejected(f"{name}={value!r}: the number of GPU slots (GPUs of all GPU workers) must be "
                             "a whole number of at least 1")
    return {"gpu_slots": int(value)}


def param_schema(schema: dict) -> dict[str, Any]:
    """The JSON schema of a Param from a pydantic property schema, flattening Optional's anyOf
    (`{"type": ["integer", "null"], "minimum": 1}`: JSON schema applies bounds to numbers only)."""
    options = schema.get("anyOf", [schema])
    types = [option["type"] for option in options]
    out: dict[str, Any] = {"type": types if len(types) > 1 else types[0]}
    for option in options:
        out.update({k: v for k, v in option.items() if k not in _NOT_CONSTRAINTS})
    out.update({k: v for k, v in schema.items() if k not in _NOT_CONSTRAINTS})
    return out


def run_params(**defaults: Any) -> dict[str, Param]:
    """One Param per RunConfig field, with its type, bounds, description and default."""
    properties = RunConfig.model_json_schema()["properties"]
    params = {}
    for name, field in RunConfig.model_fields.items():
        schema = param_schema(properties[name])
        if name == "task_types":  # short or full names, as RunConfig accepts them
            schema["items"] = {"type": "string", "enum": TASK_TYPE_NAMES}
            schema["uniqueItems"] = True
        default = defaults.get(name, field.default)
        params[name] = Param(default, title=name.replace("_", " "), description=field.description or "", **schema)
    return params
