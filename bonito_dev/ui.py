"""`make ui`: the Airflow 3 UI on this machine, on the demo's metadata database.

    python -m bonito_dev.ui                # http://127.0.0.1:8080 (another free port if 8080 is taken)
    python -m bonito_dev.ui --port 8081    # `make ui PORT=8081`

It starts Airflow's api-server (UI and REST API), scheduler (LocalExecutor), dag-processor and
triggerer from this venv, each its own process group with its output in <home>/ui-logs/, on the
SQLite database of `make demo` (demo-output/airflow/), so the demo's runs and their Dataset tab are
there. The DAG is this repository's dags/bonito_dataset.py with the bundled tiny model and the local
store demo-output/store/ as the form's defaults, and the demo's settings for the tiny model, so a
run triggered with only `source` set succeeds and publishes into the store.

Sign-in is Airflow's SimpleAuthManager: user admin with a new random password on every start,
printed once (and kept, readable only by you, in <home>/simple_auth_manager_passwords.json while
it runs). Ctrl-C (or SIGTERM/SIGHUP) stops every process it started, and only those. A second
`make ui` (or `make demo`) on the same home, while one runs, refuses to start (<home>/bonito.lock).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bonito_dev.local import REPO, HomeBusy, airflow_env, lock_home, record_in_lock, setup_db
from bonito_dev.processes import MARKER, Services, free_port, port_free

DEMO_DIR = REPO / "demo-output"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
USERNAME = "admin"
DAG_ID = "bonito_dataset"
SAMPLE_DOCS = REPO / "tests" / "assets" / "sample_docs"
TINY_MODEL = REPO / "tests" / "assets" / "tiny-bonito"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
LOG_DIR = "ui-logs"
# The form's defaults besides source/store/model: the demo's settings for the tiny model, which
# only imitates Bonito's format (bonito_dev/demo.py). full_refresh, as in the demo: a run on the
# samples reprocesses them even though the demo's runs put them in the ledger.
FORM_DEFAULTS = {"task_types": ["exqa", "ynqa", "nli"], "dtype": "float32", "min_pass_rate": 0.5,
                 "full_refresh": True}
COMPONENTS = ("scheduler", "dag-processor", "triggerer")  # besides the api-server
READY_TIMEOUT_S = 300
STOP_GRACE_S = 30


class Refused(Exception):
    """Why `make ui` cannot start (exit code 2); printed as it is."""


class Stop(Exception):
    """A signal asked us to stop."""


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


# --- ports ----------------------------------------------------------------------------------------

def next_free_port(after: int, host: str = HOST) -> int:
    """The first free port after `after` (within 100), else any free one."""
    return next((p for p in range(after + 1, min(after + 101, 65536)) if port_free(p, host)), None) or free_port(host)


def choose_port(requested: int | None, host: str = HOST) -> tuple[int, str | None]:
    """(port, a note for the user or None). An explicit port that is taken is Refused; the default
    port, when taken, is replaced by the next free one."""
    if requested is not None:
        if not port_free(requested, host):
            raise Refused(f"port {requested} on {host} is taken; choose another, e.g. "
                          f"`make ui PORT={next_free_port(requested, host)}` (or `python -m bonito_dev.ui --port ...`)")
        return requested, None
    if port_free(DEFAULT_PORT, host):
        return DEFAULT_PORT, None
    port = next_free_port(DEFAULT_PORT, host)
    return port, f"port {DEFAULT_PORT} is taken; using {port} (choose one with `make ui PORT=...`)"


# --- the environment ------------------------------------------------------------------------------

def _prefixes(*values: str | None) -> str:
    return ",".join(dict.fromkeys(p.strip() for v in values if v for p in v.split(",") if p.strip()))


def ui_env(home: Path, store: Path, port: int, passwords: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process: this repo's dags and plugins, the SQLite database in
    `home`, LocalExecutor, SimpleAuthManager with `passwords`, fresh secrets, free log-server ports,
    the tiny model and `store` as the form's defaults."""
    base = dict(os.environ if base is None else base)
    url = f"http://{HOST}:{port}"
    env = base | airflow_env(home)
    env.update({
        MARKER: uuid.uuid4().hex,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",  # user:role
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        # The scheduler's and triggerer's log servers (defaults 8793/8794 may be taken).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "BONITO_STORE": str(store),
        "BONITO_MODEL": str(TINY_MODEL),
        "BONITO_FORM_DEFAULTS": json.dumps(FORM_DEFAULTS),
        # Where runs may read and write (deployment settings; comma-separated prefixes), added to yours.
        "BONITO_ALLOWED_SOURCES": _prefixes(base.get("BONITO_ALLOWED_SOURCES"), str(SAMPLE_DOCS)),
        "BONITO_ALLOWED_STORES": _prefixes(base.get("BONITO_ALLOWED_STORES"), str(store)),
    })
    # No nightly sweep here; no async database URL of another setup.
    for unset in ("BONITO_SOURCE", "BONITO_SCHEDULE_CONFIG", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        env.pop(unset, None)
    return env


def write_password(path: Path) -> str:
    """A new random password for USERNAME in SimpleAuthManager's passwords file (mode 0600)."""
    password = secrets.token_urlsafe(12)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({USERNAME: password}, file)
    return password


# --- waiting for the deployment -------------------------------------------------------------------

def _healthy(http) -> bool:
    try:
        health = http.get("/api/v2/monitor/health").json()
    except Exception:  # noqa: BLE001 - not up yet: connection refused, a half-started server
        return False
    return isinstance(health, dict) and all(part.get("status") == "healthy" for part in health.values())


def wait_ready(services: Services, url: str, password: str) -> dict[str, Any]:
    """Once every component reports healthy and the DAG is parsed (or failed to import): what the
    banner shows (the DAG's runs, import errors). Raises RuntimeError when a process exits or after
    READY_TIMEOUT_S."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=30) as http:
        token = None
        while True:
            if exited := services.exited():
                raise RuntimeError(f"airflow processes exited while starting: {exited}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow was not ready after {READY_TIMEOUT_S} s")
            try:
                if token is None and _healthy(http):
                    answer = http.post("/auth/token", json={"username": USERNAME, "password": password})
                    answer.raise_for_status()
                    token = answer.json()["access_token"]
                    http.headers["Authorization"] = f"Bearer {token}"
                if token is not None:
                    errors = http.get("/api/v2/importErrors").raise_for_status().json()["import_errors"]
                    if http.get(f"/api/v2/dags/{DAG_ID}").status_code == 200 or errors:
                        runs = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 1})
                        total = runs.json().get("total_entries", 0) if runs.status_code == 200 else 0
                        return {"runs": total, "import_errors": errors}
            except httpx.HTTPError:  # a component still starting; the deadline bounds the wait
                pass
            time.sleep(1)


def banner(url: str, password: str, home: Path, store: Path, ready: dict[str, Any], note: str | None) -> list[str]:
    lines = [""]
    if note:
        lines.append(note)
    lines += [
        f"Airflow UI:  {url}/dags/{DAG_ID}",
        f"Sign in as:  {USERNAME}  /  {password}    (a new password on every start)",
        "",
        (f"Runs so far: {ready['runs']} (those of `make demo` included; open one, then its Dataset tab)."
         if ready["runs"] else "No runs yet (`make demo` makes one, or trigger one)."),
        f"New run:     Trigger -> set source (e.g. {SAMPLE_DOCS}) -> Trigger; it publishes into {store}",
        f"Logs:        {home / LOG_DIR}/ (processes), {home / 'logs'}/ (tasks)",
        "Stop:        Ctrl-C",
    ]
    for error in ready["import_errors"]:
        lines.append(f"\nDAG import error in {error.get('filename')}:\n{error.get('stack_trace', '')}")
    return lines


# --- main -----------------------------------------------------------------------------------------

def _raise_stop(signum, frame) -> None:
    raise Stop(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bonito_dev.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None,
                        help=f"the UI's port (default {DEFAULT_PORT}, or a free one if it is taken)")
    parser.add_argument("--output", type=Path, default=DEMO_DIR,
                        help="the demo's folder (as for `python -m bonito_dev.demo --output`): Airflow home "
                             "<output>/airflow with its SQLite database, store <output>/store (default: demo-output)")
    args = parser.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a TCP port (1-65535)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output.resolve()
    home, store = output / "airflow", output / "store"
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    services = None
    try:
        home.mkdir(parents=True, exist_ok=True)
        lock = lock_home(home, "make ui")
        port, note = choose_port(args.port)
        url = f"http://{HOST}:{port}"
        passwords = home / PASSWORDS_FILE
        env = ui_env(home, store, port, passwords)
        record_in_lock(lock, url=url, marker=env[MARKER])
        say(f"Airflow home {home}: preparing the metadata database (airflow db migrate) ...")
        setup_db(env)
        password = write_password(passwords)
        services = Services(home / LOG_DIR, env)
        say(f"starting api-server (port {port}), scheduler, dag-processor, triggerer (logs: {home / LOG_DIR}/) ...")
        services.start("api-server", "api-server", "--host", HOST, "--port", str(port))
        for name in COMPONENTS:
            services.start(name, name)
        ready = wait_ready(services, url, password)
        say(*banner(url, password, home, store, ready, note))
        while not (exited := services.exited()):
            time.sleep(1)
        say(f"airflow processes exited: {exited}", services.tails(20), "stopping the others ...")
        return 1
    except (Refused, HomeBusy) as refused:
        print(refused, file=sys.stderr, flush=True)
        return 2
    except Stop as stop:
        say(f"\n{stop}: stopping ...")
        return 0
    except RuntimeError as error:
        print(f"{error}\n{services.tails(20) if services else ''}", file=sys.stderr, flush=True)
        return 1
    except subprocess.CalledProcessError as error:  # setup_db: Airflow's own output is above
        print(f"preparing the metadata database failed: {' '.join(map(str, error.cmd[1:]))} "
              f"exited {error.returncode}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if services is not None:
            left = services.stop(STOP_GRACE_S)
            (home / PASSWORDS_FILE).unlink(missing_ok=True)
            say("stopped every process `make ui` started"
                + (f" (killed {len(left)} that outlived their process group)" if left else ""))


if __name__ == "__main__":
    sys.exit(main())
