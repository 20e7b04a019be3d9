"""A real Airflow 3 deployment on this machine, started and torn down by tests/deployment.

Nothing in it is simulated: the metadata database is a fresh database on the local PostgreSQL
server; the CeleryExecutor sends task workloads through a Redis database (the Celery broker;
results go to PostgreSQL) to a Celery worker; the api-server (REST API, UI and execution API),
scheduler, dag-processor, triggerer and worker are this venv's `airflow` commands, each started as
its own process group with its output in a log file. The only stand-in is the Hugging Face Hub
(tests/hub_server.py on loopback), which cannot be reached from here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

# The processes themselves: shared with `make ui` (bonito_dev/ui.py).
from bonito_dev.processes import AIRFLOW, MARKER, Services, free_port, marked_processes  # noqa: F401

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 2.0,
               details: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy (returned); on timeout fail with `details()`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(interval)


def services_down() -> list[str]:
    """Which of the local services the deployment needs do not answer: PostgreSQL on
    127.0.0.1:5432 (as user postgres, trust auth) and Redis on 127.0.0.1:6379."""
    import psycopg
    import redis

    down = []
    try:
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
    except psycopg.Error:
        down.append("PostgreSQL on 127.0.0.1:5432 (user postgres)")
    try:
        redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=3).ping()
    except redis.RedisError:
        down.append(f"Redis on {REDIS_HOST}:{REDIS_PORT}")
    return down


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A new database on the local PostgreSQL server, dropped on exit; yields its libpq URL part."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def redis_database(owner: str) -> Iterator[int]:
    """An empty, non-zero database index of the local Redis server, claimed with a key naming
    `owner` (so concurrent sessions never share one) and flushed on exit."""
    import redis

    count = int(redis.Redis(REDIS_HOST, REDIS_PORT).config_get("databases")["databases"])
    for index in random.sample(range(1, count), count - 1):
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=index)
        if client.dbsize() == 0 and client.set("bonito-deployment-owner", owner, nx=True):
            break
    else:
        raise RuntimeError("no empty Redis database left")
    try:
        yield index
    finally:
        client.flushdb()


class AirflowApi:
    """The public REST API (/api/v2) as a signed-in user of the SimpleAuthManager."""

    def __init__(self, url: str, username: str, password: str):
        self.url, self.username, self.password = url, username, password
        self.http = httpx.Client(base_url=url, timeout=60)

    def login(self) -> None:
        answer = self.http.post("/auth/token", json={"username": self.username, "password": self.password})
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"/api/v2{path}", **kwargs)
        if answer.is_error:
            raise AssertionError(f"{method} {path}: {answer.status_code} {answer.text[:2000]}")
        return answer.json() if answer.content else None

    def healthy(self) -> bool:
        """Whether /monitor/health reports the metadatabase and every component healthy."""
        try:
            health = self.http.get("/api/v2/monitor/health").json()
        except (httpx.HTTPError, json.JSONDecodeError):
            return False
        return all(part.get("status") == "healthy" for part in health.values())

    def dag(self, dag_id: str) -> dict | None:
        answer = self.http.get(f"/api/v2/dags/{dag_id}")
        return answer.json() if answer.status_code == 200 else None

    def import_errors(self) -> list[dict]:
        return self.call("GET", "/importErrors")["import_errors"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict, **fields: Any) -> str:
        body = {"logical_date": None, "conf": conf, **fields}
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def runs(self, dag_id: str, **filters: Any) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, **filters})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})[
            "task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                          params={"deserialize": True})
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, ti: dict) -> str:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        content = self.call("GET", path, params={"map_index": ti["map_index"], "full_content": True})["content"]
        return "\n".join(_log_line(line) for line in content)

    def failure_report(self, dag_id: str, run_id: str, log_lines: int = 80) -> str:
        """Every task instance's state, and the log tail of those that failed."""
        report = []
        for ti in self.task_instances(dag_id, run_id):
            report.append(f"{ti['task_id']}[{ti['map_index']}] try {ti['try_number']}: {ti['state']}")
            if ti["state"] in ("failed", "up_for_retry") and ti["try_number"]:
                log = self.task_log(dag_id, run_id, ti).splitlines()[-log_lines:]
                report.append("    " + "\n    ".join(log))
        return "\n".join(report)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, details: Callable[[], str] = lambda: "",
                     expect: str = "success") -> dict:
        """The run once it ended; fails with its task instances and failed logs unless it ended in `expect`."""
        run = wait_until(lambda: (r := self.run(dag_id, run_id))["state"] in ("success", "failed") and r,
                         timeout, f"run {run_id}", interval=5,
                         details=lambda: self.failure_report(dag_id, run_id) + "\n" + details())
        assert run["state"] == expect, (f"run {run_id} {run['state']}\n{self.failure_report(dag_id, run_id)}\n"
                                        f"{details()}")
        return run


def _log_line(line: Any) -> str:
    """A structured task-log line as text: its event, then its exceptions (type: message)."""
    if not isinstance(line, dict):
        return str(line)
    errors = [f"  {e.get('exc_type')}: {e.get('exc_value')}" for e in line.get("error_detail") or []]
    return "\n".join([str(line.get("event", "")), *errors])
