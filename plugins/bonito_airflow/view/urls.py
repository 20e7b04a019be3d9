"""Links into the Dataset view (and the runbooks it serves), for extra links, alerts and the approval
gate. No Airflow import here: callers pass the api-server's base URL (`[api] base_url`)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

URL_PREFIX = "/bonito"


def base_path(base_url: str | None) -> str:
    """The path part of the api-server's base URL ("" at the root), under which the UI is served."""
    return urlsplit(base_url or "").path.rstrip("/")


def _q(value: str) -> str:
    return quote(value, safe="")


def run_path(dag_id: str, run_id: str) -> str:
    return f"{URL_PREFIX}/dags/{_q(dag_id)}/runs/{_q(run_id)}"


def run_url(base_url: str, dag_id: str, run_id: str, section: str | None = None) -> str:
    """The run's Dataset view (at `section`, an anchor: cause, summary, quality, samples, quarantine, ...)."""
    return base_url.rstrip("/") + run_path(dag_id, run_id) + (f"#{section}" if section else "")


def file_url(base_url: str, dag_id: str, run_id: str, path: str) -> str:
    """A file of the run's folder (e.g. validate/data_docs/index.html), served by the view."""
    return base_url.rstrip("/") + run_path(dag_id, run_id) + "/files/" + quote(path)


def runbook_url(base_url: str, dag_id: str, task_id: str) -> str:
    """The task's runbook (its doc_md), rendered by the view."""
    return f"{base_url.rstrip('/')}{URL_PREFIX}/dags/{_q(dag_id)}/tasks/{_q(task_id)}/runbook"
