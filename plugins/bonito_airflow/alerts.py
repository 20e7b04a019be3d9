"""Structured alerts for the on-call: one JSON log line (logger `bonito.alert`, prefix BONITO_ALERT)
and, when connection `bonito_alerts` exists, a POST of the same payload to its webhook. The payload
has a Slack-style `text` line, so a Slack incoming webhook shows it as is. Sending never raises: an
alert that cannot be delivered is logged, and the task's own outcome stands."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from bonito_airflow.compat import redact
from bonito_airflow.hooks import AlertWebhookHook

log = logging.getLogger("bonito.alert")
WEBHOOK_TIMEOUT_S = 10
MESSAGE_CHARS = 2000


def emit_alert(kind: str, context: dict, message: str, **details: Any) -> dict[str, Any]:
    """Log and post one alert about the task instance in `context`; returns the payload sent."""
    ti = context["ti"]
    runbook = (getattr(context.get("task"), "doc_md", None) or "").strip().splitlines()
    payload = redact({
        "alert": kind,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "message": message[:MESSAGE_CHARS],
        "log_url": ti.log_url,
        "runbook": runbook[0].lstrip("# ") if runbook else None,  # its title; runbook_url opens it
        **_links(ti.dag_id, ti.run_id, ti.task_id),
        **details,
    })
    shard = f"[{ti.map_index}]" if ti.map_index is not None and ti.map_index >= 0 else ""
    payload["text"] = (f":rotating_light: {kind}: {ti.dag_id}.{ti.task_id}{shard} run {ti.run_id}: {payload['message']}"
                       f"\n<{payload['runbook_url']}|Runbook> · <{payload['dataset_view']}|Dataset view>")
    log.error("BONITO_ALERT %s", json.dumps(payload, default=str, sort_keys=True))
    _post(payload)
    return payload


def _links(dag_id: str, run_id: str, task_id: str) -> dict[str, str]:
    """Where the on-call goes next: the task's runbook and the run's Dataset view (the view's section of
    the task), both served by the plugin on the api-server."""
    from bonito_airflow.view.links import api_base_url
    from bonito_airflow.view.urls import run_url, runbook_url

    base = api_base_url()
    return {"runbook_url": runbook_url(base, dag_id, task_id), "dataset_view": run_url(base, dag_id, run_id, "cause")}


def _post(payload: dict[str, Any]) -> None:
    import httpx

    try:
        url = AlertWebhookHook().url()
        if url:
            httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S).raise_for_status()
    except Exception as err:  # a failed delivery must not change the task's outcome
        log.warning("alert webhook delivery failed: %s", type(err).__name__)


def on_task_failure(context: dict) -> None:
    """on_failure_callback: the task failed for good (no retries left, or a non-retryable error)."""
    error = context.get("exception")
    message = f"{type(error).__name__}: {error}" if error else "task failed"
    emit_alert("task_failed", context, message)


class Deadline:
    """Fires one `deadline_missed` alert when the `with` block runs longer than `budget_s`; the work
    itself goes on (an alert, not a timeout)."""

    def __init__(self, context: dict, what: str, budget_s: float):
        self.context, self.what, self.budget_s = context, what, budget_s
        self._timer = threading.Timer(budget_s, self._fire)
        self._timer.daemon = True
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        emit_alert("deadline_missed", self.context, f"{self.what} has run longer than its budget of "
                   f"{self.budget_s / 60:g} min and is still running", budget_s=self.budget_s)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
