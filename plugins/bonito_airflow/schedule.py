"""The settings of scheduled runs, and the one place a task's run values are put together.

Scheduled (nightly) runs cannot fill in a form, so they get their own settings: a JSON object of
RunConfig fields (task types, Hub repo, `publish_mode: "append"`, thresholds, ...) laid over the
form's defaults, field by field, in this order (a later layer wins):

1. the form's defaults (RunConfig's, and BONITO_SOURCE / BONITO_STORE / BONITO_MODEL);
2. the environment variable BONITO_SCHEDULE_CONFIG, read when the DAG is parsed: an invalid
   document (bad JSON, an unknown field, a value or combination RunConfig rejects) is an import
   error naming the field, and the DAG's docs show the settings;
3. the Airflow Variable `bonito_schedule_config`, read at run time by the scheduled run's first
   task, check_params (never at parse time: that would cost a metadata-DB call per parse). It
   changes the nightly settings without a restart; an invalid one fails that run's check_params
   without retries.

Manual runs (the trigger form, the REST API's conf, `dag.test`) use neither. check_params returns
the settings it applied; every later task of a scheduled run reads them from its XCom, so one run
uses one set of settings even if the Variable changes while it runs.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from bonito_tasks.config import ConfigRejected, RunConfig, check_config

ENV_VAR = "BONITO_SCHEDULE_CONFIG"
VARIABLE = "bonito_schedule_config"
CHECK_TASK_ID = "check_params"  # the first task: resolves and checks the run's values


def parse_settings(text: str | None, origin: str) -> dict[str, Any]:
    """The RunConfig fields of a JSON object (empty or unset: none). ConfigRejected names what is
    wrong: not JSON, not an object, or an unknown field (with the closest field name)."""
    if text is None or not text.strip():
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigRejected(f"{origin} is not valid JSON: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigRejected(f"{origin} must be a JSON object of RunConfig fields, not {type(settings).__name__}")
    fields = list(RunConfig.model_fields)
    for name in settings:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; fields: {', '.join(fields)}"
            raise ConfigRejected(f"{origin}: unknown field {name!r}{hint}")
    return settings


def load_schedule_settings(text: str | None, form_defaults: dict[str, Any], origin: str = ENV_VAR) -> dict[str, Any]:
    """Parse-time: the settings of `text`, checked over the form's defaults as a whole RunConfig
    (field bounds and the rules between fields). Raises ConfigRejected, which fails the DAG's import."""
    settings = parse_settings(text, origin)
    base = dict(form_defaults)
    # Without BONITO_SOURCE there is no schedule and no default source; the settings are still checked.
    base.update({k: f"<{k}>" for k in ("source", "store") if not str(base.get(k) or "").strip()})
    check_config(base | settings, origin)
    return settings


def is_scheduled(context) -> bool:
    return getattr(context["dag_run"], "run_type", None) == "scheduled"


def _run_params(context) -> dict[str, Any]:
    """The task's params that are RunConfig fields (a task's own form fields, such as the approval's
    note, are not run values)."""
    return {k: v for k, v in dict(context["params"]).items() if k in RunConfig.model_fields}


def resolve_run_values(context, env_settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """check_params: (the run's values, the settings applied over its params). Manual runs: the
    params as they are. Scheduled runs: the params, then `env_settings`, then the Variable's."""
    params = _run_params(context)
    if not is_scheduled(context):
        return params, {}
    from airflow.sdk import Variable

    settings = dict(env_settings) | parse_settings(Variable.get(VARIABLE, default=None), f"Variable {VARIABLE}")
    return params | settings, settings


def run_values(context) -> dict[str, Any]:
    """Every other task: the run's params, plus, for a scheduled run, the settings its check_params
    applied (read from that task's XCom)."""
    params = _run_params(context)
    if not is_scheduled(context):
        return params
    resolved = context["ti"].xcom_pull(task_ids=CHECK_TASK_ID)
    if not resolved or "settings" not in resolved:
        raise ConfigRejected(f"this scheduled run has no resolved settings: its task {CHECK_TASK_ID} did not succeed")
    return params | resolved["settings"]


def schedule_doc(schedule: str | None, settings: dict[str, Any]) -> str:
    """The DAG docs' paragraph on scheduled runs: when they run and the settings they use."""
    if not schedule:
        return f"**Scheduled runs:** none (no `BONITO_SOURCE`, or `BONITO_SCHEDULE` empty); `{ENV_VAR}` is unused."
    shown = f"`{json.dumps(settings, sort_keys=True)}`" if settings else "none (the form's defaults)"
    return (f"**Scheduled runs** (`{schedule}`): the form's defaults, then `{ENV_VAR}`: {shown}, then the "
            f"Variable `{VARIABLE}` (read by `{CHECK_TASK_ID}`).")
