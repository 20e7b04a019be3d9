"""The deployment's allowed locations (sources, stores, exports), from its environment or an
Airflow Variable an admin sets; checked by check_params and again by every later task.

- `BONITO_ALLOWED_SOURCES`, `BONITO_ALLOWED_STORES`, `BONITO_ALLOWED_EXPORTS`: comma-separated
  URIs (see bonito_tasks.access for how they match). Unset or empty: sources default to
  `BONITO_SOURCE` and the bundled sample documents, stores to the form's store (`BONITO_STORE`, else
  `$AIRFLOW_HOME/bonito-store`), exports to none; the scheduled runs' settings
  (`BONITO_SCHEDULE_CONFIG`) add their own source, store and export.
- The Variable `bonito_allowed_locations`, when set: a JSON object with any of `sources`, `stores`,
  `exports` (lists of URIs); each key given replaces that list. Variables are edited by admins
  (and whoever the auth manager lets edit Variables).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bonito_tasks.access import DEMO_SOURCES, AllowedLocations, split_list
from bonito_tasks.config import ConfigRejected

ENV_VARS = {"sources": "BONITO_ALLOWED_SOURCES", "stores": "BONITO_ALLOWED_STORES",
            "exports": "BONITO_ALLOWED_EXPORTS"}
VARIABLE = "bonito_allowed_locations"


def default_store(environ: Mapping[str, str]) -> str:
    home = environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return environ.get("BONITO_STORE") or f"{home}/bonito-store"


def env_locations(environ: Mapping[str, str] | None = None) -> AllowedLocations:
    """The allowed locations the environment sets (with the defaults above)."""
    from bonito_airflow.schedule import ENV_VAR, parse_settings

    environ = os.environ if environ is None else environ
    scheduled = parse_settings(environ.get(ENV_VAR), ENV_VAR)
    defaults = {
        "sources": (environ.get("BONITO_SOURCE", ""), *DEMO_SOURCES, scheduled.get("source") or ""),
        "stores": (default_store(environ), scheduled.get("store") or ""),
        "exports": (scheduled.get("export_s3_uri") or "",),
    }
    lists, origin = {}, {}
    for key, name in ENV_VARS.items():
        given = split_list(environ.get(name))
        lists[key] = given or split_list(",".join(defaults[key]))
        origin[key] = name if given else f"{name} (unset: its default)"
    return AllowedLocations(**lists, origin=origin)


def parse_variable(text: str | None, base: AllowedLocations) -> AllowedLocations:
    """`base` with the lists the Variable's JSON gives; ConfigRejected names what is wrong."""
    if text is None or not text.strip():
        return base
    where = f"Variable {VARIABLE}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigRejected(f"{where} is not valid JSON: {error}") from None
    if not isinstance(value, dict) or set(value) - set(ENV_VARS):
        raise ConfigRejected(f"{where} must be a JSON object with keys among {', '.join(ENV_VARS)}, not {text!r}")
    lists: dict[str, Any] = {"sources": base.sources, "stores": base.stores, "exports": base.exports}
    origin = dict(base.origin)
    for key, entries in value.items():
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigRejected(f"{where}: {key} must be a list of URIs, not {entries!r}")
        lists[key] = tuple(e.strip() for e in entries if e.strip())
        origin[key] = where
    return AllowedLocations(**lists, origin=origin)


def allowed_locations() -> AllowedLocations:
    """In a task: the environment's lists, with the Variable's over them (one Variable read)."""
    from airflow.sdk import Variable

    return parse_variable(Variable.get(VARIABLE, default=None), env_locations())
