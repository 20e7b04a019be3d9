"""One real Airflow 3 deployment, shared by every test of this package but test_make_ui.py.

What runs (see stack.py): a fresh PostgreSQL database as the metadata DB and Celery result
backend; CeleryExecutor with a Redis database as broker; `airflow api-server`, `scheduler`,
`dag-processor`, `triggerer` and `celery worker --queues default,gpu` as separate processes;
SimpleAuthManager with auth on (user admin, a random password). The DAG is this repo's
dags/bonito_dataset.py with the tiny model, a local store, and a nightly-sweep source of one
document scheduled every minute, whose runs append to the Hub dataset (BONITO_SCHEDULE_CONFIG).
The Hub is tests/hub_server.py on loopback, the alert webhook tests/webhook_server.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SAMPLE_DOCS, TINY_MODEL
from deployment.stack import (
    MARKER,
    AirflowApi,
    Services,
    free_port,
    postgres_database,
    redis_database,
    services_down,
    wait_until,
)
from hub_server import HubServer
from webhook_server import WebhookReceiver

DAG_ID = "bonito_dataset"
USERNAME = "admin"
# A second account, role `user` (may trigger and answer required actions): the approval tests trigger as
# one and approve as the other (BONITO_APPROVERS names both; the one who triggered a run never approves it).
TRIGGERER = "alice"
APPROVERS = f"{USERNAME},{TRIGGERER}"
SWEEP_DOC = "apache-2.0.txt"  # the one document in BONITO_SOURCE, the scheduled sweep's prefix
HUB_REPO = "bonito-test/deploy"
# The scheduled runs' own settings: append their new rows to the manual runs' Hub dataset. The tiny
# model knows nothing: gate the plumbing, not its answers' quality.
# Two task types: the tiny model's exqa answers alone may all fail their check on one document.
TASK_TYPES = ["exqa", "ynqa"]
# Its answers drift at random from run to run: the drift gate only warns here (tests/unit/test_release.py tests it).
NO_DRIFT_FAILURE = {"drift_kl_failure": None, "drift_rate_failure": None}
SCHEDULE_SETTINGS = {"hub_repo_id": HUB_REPO, "publish_mode": "append", "task_types": TASK_TYPES, "dtype": "float32",
                     "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0, **NO_DRIFT_FAILURE}
ARTIFACTS = Path(os.environ.get("BONITO_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@dataclass
class Deployment:
    url: str
    username: str
    password: str
    api: AirflowApi
    hub: HubServer
    alerts: WebhookReceiver
    services: Services
    source: Path  # BONITO_SOURCE, the folder the scheduled runs sweep
    store: Path  # BONITO_STORE
    passwords: dict[str, str]  # every account's password

    def details(self) -> str:
        """The processes' log tails, for failure messages."""
        return self.services.tails()

    def api_as(self, username: str) -> AirflowApi:
        """The REST API signed in as another account of the deployment."""
        api = AirflowApi(self.url, username, self.passwords[username])
        api.login()
        return api


def _airflow_env(home: Path, db: str, redis_db: int, port: int, passwords: Path, hub: HubServer,
                 alerts: WebhookReceiver, source: Path, store: Path) -> dict[str, str]:
    from bonito_dev.local import airflow_env

    home.mkdir(parents=True)
    env = dict(os.environ) | airflow_env(home)  # dags and plugins folders, PYTHONPATH, VLLM_CPU_KVCACHE_SPACE=1
    for name in ("BONITO_ALLOWED_SOURCES", "BONITO_ALLOWED_STORES", "BONITO_ALLOWED_EXPORTS"):
        env.pop(name, None)  # the defaults: BONITO_SOURCE and the samples, BONITO_STORE, no export
    env.update({
        MARKER: uuid.uuid4().hex,
        # psycopg 3 serves both of Airflow's engines; left alone, the async URL would name asyncpg.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg://{db}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+psycopg_async://{db}",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg://{db}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin,{TRIGGERER}:user",  # user:role
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "BONITO_APPROVERS": APPROVERS,
        # The scheduled sweep publishes to the Hub unattended here (the default, scheduled-hub, would have
        # it wait for a person); approval itself is tested with require_approval (test_untrusted.py).
        "BONITO_REQUIRE_APPROVAL": "never",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        # Free ports for the worker's and triggerer's log servers (defaults 8793/8794 may be taken).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The DAG file never changes here: parsed once, not every 30 s (a process and the DAG's imports each time).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "BONITO_SOURCE": str(source),
        "BONITO_SCHEDULE": "* * * * *",
        "BONITO_SCHEDULE_CONFIG": json.dumps(SCHEDULE_SETTINGS),
        "BONITO_FORM_DEFAULTS": json.dumps(NO_DRIFT_FAILURE),
        "BONITO_STORE": str(store),
        "BONITO_MODEL": str(TINY_MODEL),
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": hub.token,
        "AIRFLOW_CONN_HUGGINGFACE_DEFAULT": json.dumps({"conn_type": "huggingface", "password": hub.token}),
        "AIRFLOW_CONN_BONITO_ALERTS": json.dumps({"conn_type": "http", "host": alerts.url}),
    })
    return env


@pytest.fixture(scope="package")
def deployment(tmp_path_factory):
    """The running deployment, stopped (every process killed, database dropped, Redis database
    flushed) after the last test of this package, so it never competes with the rest of the suite.

    Without PostgreSQL and Redis on this machine the package's tests skip, saying how to run them;
    with BONITO_REQUIRE_SERVICES=1 (set by .ci/run) they fail instead."""
    if down := services_down():
        message = (f"deployment tests need {' and '.join(down)}: run `CI=true bash .ci/run` (starts them), or "
                   "start them yourself (PostgreSQL with trust auth for user postgres), then `make test-deployment`")
        if os.environ.get("BONITO_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("deployment")
    source = root / "source"
    source.mkdir()
    shutil.copy(SAMPLE_DOCS / SWEEP_DOC, source)
    password = secrets.token_urlsafe(12)
    accounts = {USERNAME: password, TRIGGERER: secrets.token_urlsafe(12)}
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps(accounts))
    port = free_port()
    name = f"bonito_deploy_{uuid.uuid4().hex[:10]}"

    with ExitStack() as cleanup:
        db = cleanup.enter_context(postgres_database(name))
        redis_db = cleanup.enter_context(redis_database(name))
        hub = cleanup.enter_context(HubServer())
        alerts = cleanup.enter_context(WebhookReceiver())
        env = _airflow_env(root / "airflow", db, redis_db, port, passwords, hub, alerts, source, root / "store")
        from bonito_dev.local import setup_db

        setup_db(env)  # airflow db migrate, pool gpu

        services = Services(root / "logs", env)
        cleanup.callback(_stop, services)
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("triggerer", "triggerer")
        # No vLLM settings here: the generate operator itself keeps vLLM's engine core in the task
        # process, which is what makes it run in a Celery prefork worker (see operators.py).
        services.start("celery-worker", "celery", "worker", "--queues", "default,gpu", "--concurrency", "2")

        api = AirflowApi(f"http://127.0.0.1:{port}", USERNAME, password)
        stack = Deployment(api.url, USERNAME, password, api, hub, alerts, services, source, root / "store", accounts)

        def up(check):
            services.assert_running()
            return check()

        wait_until(lambda: up(api.healthy), 300, "every component to report healthy", details=stack.details)
        api.login()
        wait_until(lambda: up(lambda: api.dag(DAG_ID) or api.import_errors()), 300, f"{DAG_ID} to be parsed",
                   details=stack.details)
        assert not api.import_errors(), api.import_errors()
        yield stack


def _stop(services: Services) -> None:
    # A short grace: the database and the Redis database are dropped next, so nothing is kept.
    left = services.stop(grace_s=5)
    assert not left, f"deployment processes outlived their process groups' SIGKILL: {left}"


def pytest_collection_modifyitems(items):
    """test_make_ui.py first: it starts an Airflow of its own, so the stack above (started for the
    first test that needs it) is not up, idle, while it runs."""
    items.sort(key=lambda item: item.path.name != "test_make_ui.py")


@pytest.fixture
def artifacts(request) -> Path:
    """Where a test saves its screenshots: $BONITO_TEST_ARTIFACTS or tests/deployment/artifacts/<test>."""
    path = ARTIFACTS / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the tails of every deployment process's log."""
    report = yield
    stack = item.funcargs.get("deployment") if hasattr(item, "funcargs") else None
    if report.failed and stack is not None:
        report.sections.append(("airflow deployment logs", stack.details()))
    return report
