"""The DAG's trigger-form params, derived from RunConfig so the two never drift apart."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from bonito_tasks.config import RunConfig
from bonito_tasks.task_types import TASK_TYPES

# The form offers every task type by its short name, then by its full name (as Bonito was trained on it).
TASK_TYPE_NAMES = [*TASK_TYPES, *TASK_TYPES.values()]
_SCHEMA_KEYS = ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "minItems")


def _json_type(schema: dict) -> tuple[Any, dict]:
    """(type, extra keywords) of a pydantic property schema, flattening Optional's anyOf."""
    if "anyOf" in schema:
        types, extra = [], {}
        for option in schema["anyOf"]:
            types.append(option["type"])
            extra.update({k: option[k] for k in _SCHEMA_KEYS if k in option})
        return types, extra
    return schema["type"], {k: schema[k] for k in _SCHEMA_KEYS if k in schema}


def run_params(**defaults: Any) -> dict[str, Param]:
    """One Param per RunConfig field, with its type, bounds, description and default."""
    properties = RunConfig.model_json_schema()["properties"]
    params = {}
    for name, field in RunConfig.model_fields.items():
        schema = properties[name]
        json_type, extra = _json_type(schema)
        default = defaults.get(name, field.default)
        if name == "task_types":  # short or full names, as RunConfig accepts them
            extra = {"items": {"type": "string", "enum": TASK_TYPE_NAMES}, "uniqueItems": True, "minItems": 1}
        params[name] = Param(default, type=json_type, title=name.replace("_", " "),
                             description=field.description or "", **extra)
    return params
