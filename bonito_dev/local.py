"""A self-contained local Airflow (SQLite metadata DB, this repo's dags and plugins) for the demo and tests."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
# Held (flock) by the one `make ui` or `make demo` using an Airflow home; it names its owner.
LOCK_FILE = "bonito.lock"


class HomeBusy(RuntimeError):
    """Another local Airflow (`make ui`, `make demo`) uses this Airflow home and its database."""


def airflow_env(home: Path) -> dict[str, str]:
    """The environment that points Airflow at `home` and this repo (added to the current one)."""
    paths = [str(REPO / "plugins"), str(REPO / "dags"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
    }


def configure(home: Path) -> None:
    """Point this process's Airflow at `home` and this repo. Must run before airflow is imported."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(home))


ALLOWED_VARS = {"source": "BONITO_ALLOWED_SOURCES", "store": "BONITO_ALLOWED_STORES",
                "export_s3_uri": "BONITO_ALLOWED_EXPORTS"}


def allow_own_locations(conf: dict[str, Any], environ: dict[str, str] | Any = None) -> None:
    """On one's own machine the person running is the deployment: allow the source, store and
    export of `conf` (added to BONITO_ALLOWED_SOURCES / _STORES / _EXPORTS of this process), so
    check_params accepts them (docs/security.md)."""
    environ = os.environ if environ is None else environ
    for key, name in ALLOWED_VARS.items():
        if conf.get(key):
            given = [p.strip() for p in environ.get(name, "").split(",") if p.strip()]
            environ[name] = ",".join(dict.fromkeys([*given, str(conf[key])]))


def setup_db(env: dict[str, str] | None = None) -> None:
    """Create or upgrade the metadata database and the `gpu` pool (idempotent), for this process's
    Airflow or the one `env` configures. The pool has one slot per GPU (BONITO_GPU_SLOTS, default
    1); generate tasks run in it."""
    env = env or dict(os.environ)
    airflow = str(Path(sys.executable).with_name("airflow"))
    for args in (["db", "migrate"],
                 ["pools", "set", "gpu", env.get("BONITO_GPU_SLOTS", "1"), "GPU slots for bonito generate tasks"]):
        subprocess.run([airflow, *args], check=True, stdout=subprocess.DEVNULL, env=env)


def load_dag(dag_id: str):
    """The DAG as the dag-processor would parse it from this repo's dags folder."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def lock_home(home: Path, command: str) -> IO[str]:
    """<home>/bonito.lock, locked for this process until it ends (or closes the file), naming
    `command`. HomeBusy when another process holds it, or when processes a previous holder started
    (found by the marker it recorded with `record_in_lock`) are still alive: two schedulers, or a
    scheduler and a dag.test(), must not run one database's runs."""
    from bonito_dev.processes import marked_processes

    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(handle)
        handle.close()
        raise HomeBusy(f"`{owner.get('command', 'another local Airflow')}` is running on {home}{_where(owner)}: "
                       f"use it, or stop it first (Ctrl-C in its terminal, or kill {owner.get('pid', '<pid>')}); "
                       "one local Airflow at a time runs this metadata database.") from None
    previous = _owner(handle)
    if previous.get("marker") and (left := marked_processes(previous["marker"])):
        handle.close()
        pids = " ".join(map(str, left))
        raise HomeBusy(f"processes started by an earlier `{previous.get('command')}` on {home} are still running "
                       f"(pids {pids}): stop them first with `kill {pids}`")
    _write(handle, {"pid": os.getpid(), "command": command})
    return handle


def record_in_lock(handle: IO[str], **details: Any) -> None:
    """Add `details` (url, marker: what `make ui` started) to the record of the lock we hold."""
    _write(handle, _owner(handle) | details)


def _write(handle: IO[str], record: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def _owner(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        owner = json.loads(handle.read())
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _where(owner: dict[str, Any]) -> str:
    details = [f"pid {owner['pid']}" if "pid" in owner else "", owner.get("url", "")]
    return f" ({', '.join(d for d in details if d)})" if any(details) else ""
