"""What the Dataset view needs from Airflow, on the api-server: the DAG run (its state and conf), the
params it ran with (the DAG's defaults merged with the run's conf), the run's store (S3
credentials from the `aws_default` connection, never shown), and a task's runbook.

The run's folder is `<store>/<dag_id>/<run folder>` (bonito_tasks.store.run_prefix: the run id
only), where the store is the deployment's, never one a run's conf names on its own
(`run_store_uri`).

Each failure a person can meet is a `ViewProblem` with a status code and a readable message: no such
run, not a bonito run, the store cannot be reached. Nothing here holds a secret in what it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bonito_tasks.contracts import RunRef
from bonito_tasks.store import ArtifactStore, S3Store, open_store

log = logging.getLogger(__name__)


class ViewProblem(Exception):
    """Something a person can act on, shown as a page with `status` (never a stack trace)."""

    def __init__(self, status: int, title: str, detail: str):
        super().__init__(f"{title}: {detail}")
        self.status, self.title, self.detail = status, title, detail


@dataclass
class RunInfo:
    run: RunRef
    state: str  # the DagRun's state: queued, running, success, failed
    params: dict[str, Any]
    start_date: str | None
    end_date: str | None
    store_uri: str = ""  # the deployment's store the run's folder is in (run_store_uri)

    @property
    def finished(self) -> bool:
        return self.state in ("success", "failed")


def view_stores(environ=None, variable: str | None = None) -> tuple[list[str], str | None, bool]:
    """The stores the view reads runs from: the deployment's store (BONITO_STORE, else
    $AIRFLOW_HOME/bonito-store), the scheduled runs' store (BONITO_SCHEDULE_CONFIG), and each
    allowed store (BONITO_ALLOWED_STORES or the Variable bonito_allowed_locations) as a store of its
    own; the scheduled runs' store (None: the deployment's); and whether the allowed stores hold `*`
    (any store)."""
    import os

    from bonito_airflow.access import default_store, env_locations, parse_variable
    from bonito_airflow.schedule import ENV_VAR, parse_settings
    from bonito_tasks.access import ANYWHERE

    environ = os.environ if environ is None else environ
    allowed = parse_variable(variable, env_locations(environ))
    scheduled = parse_settings(environ.get(ENV_VAR), ENV_VAR).get("store")
    stores = [default_store(environ), *([scheduled] if scheduled else []),
              *[s for s in allowed.stores if s != ANYWHERE]]
    return list(dict.fromkeys(stores)), scheduled, ANYWHERE in allowed.stores


def run_store_uri(params: dict[str, Any], scheduled: bool, stores: list[str], scheduled_store: str | None,
                  anywhere: bool) -> str:
    """The store of a run's folder, chosen among the deployment's `stores` (view_stores): a
    scheduled run's is the scheduled runs' store (else the deployment's), a manual run's the one its
    params name when that is one of `stores` (or any with `*`). ViewProblem 403 otherwise: the
    view never reads a folder a run's conf chose on its own."""
    from bonito_tasks.access import BadLocation, same_location

    if scheduled:
        return scheduled_store or stores[0]
    named = str(params.get("store") or "").strip()
    if not named:
        return stores[0]
    try:
        for store in stores:
            if same_location(named, store):
                return store
    except BadLocation:
        pass
    if anywhere:
        return named
    raise ViewProblem(403, "Store not shown",
                      f"This run names the store {named!r}, which is not one of this deployment's stores "
                      f"({', '.join(stores)}): the Dataset view reads runs from those only. Its check_params task "
                      "refuses it too, unless an admin allowed it (BONITO_ALLOWED_STORES).")


def load_run(dag_id: str, run_id: str) -> RunInfo:
    """The DAG run and the params it ran with; ViewProblem 404 when there is no such run or it is
    not a run of a DAG with a `store` param."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dag_run is None:
            raise ViewProblem(404, "No such run", f"DAG {dag_id!r} has no run {run_id!r}.")
        params: dict[str, Any] = {}
        try:
            dag = DBDagBag().get_dag_for_run(dag_run, session)
        except Exception as err:  # a DAG version that cannot be deserialized: the run's conf still counts
            log.warning("could not load the DAG of %s/%s: %s", dag_id, run_id, err)
            dag = None
        if dag is not None:
            params = dict(dag.params.deep_merge(dag_run.conf or {}).dump())
        else:
            params = dict(dag_run.conf or {})
        scheduled = str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "scheduled"
        info = RunInfo(
            run=RunRef(dag_id=dag_id, run_id=run_id),
            state=str(dag_run.state or "unknown"),
            params=params,
            start_date=dag_run.start_date.isoformat(timespec="seconds") if dag_run.start_date else None,
            end_date=dag_run.end_date.isoformat(timespec="seconds") if dag_run.end_date else None,
        )
    if "store" not in info.params:
        raise ViewProblem(404, "Not a bonito run",
                          f"Run {run_id!r} of DAG {dag_id!r} has no `store` param: the Dataset view shows runs of "
                          "bonito DAGs (bonito_dataset), whose params name the artifact store.")
    info.store_uri = run_store_uri(info.params, scheduled, *view_stores(variable=_allowed_variable()))
    return info


def _allowed_variable() -> str | None:
    """The Variable bonito_allowed_locations, read on the api-server (no task context here)."""
    from airflow.models.variable import Variable

    from bonito_airflow.access import VARIABLE

    return Variable.get(VARIABLE, default_var=None)


def open_run_store(info: RunInfo, aws_conn_id: str = "aws_default") -> ArtifactStore:
    """The run's store; ViewProblem 502 when it cannot be reached (the message names the store and
    the error type, never a credential)."""
    from bonito_airflow.hooks import S3ConnectionHook

    uri = info.store_uri
    try:
        kwargs = S3ConnectionHook(aws_conn_id).client_kwargs() if uri.startswith("s3://") else {}
        if kwargs or uri.startswith("s3://"):
            from botocore.config import Config

            # A person is waiting: a dead endpoint answers within seconds, not after a minute of retries.
            kwargs["config"] = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2})
        store = open_store(uri, **kwargs)
        if isinstance(store, S3Store):  # one cheap request: a missing bucket or a dead endpoint fails here
            store.client.head_bucket(Bucket=store.bucket)
    except Exception as err:
        raise unreachable(uri, err) from err
    return store


def unreachable(uri: str, err: BaseException) -> ViewProblem:
    from bonito_airflow.compat import redact

    message = str(redact(str(err)))[:300]
    return ViewProblem(502, "Store unreachable",
                       f"The run's store {uri} could not be read ({type(err).__name__}: {message}). Check that it "
                       "exists and that connection aws_default (for s3://) works from the api-server.")


def task_runbook(dag_id: str, task_id: str) -> str:
    """The task's doc_md (its runbook) in the DAG's latest version; ViewProblem 404 without one."""
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session

    with create_session() as session:
        dag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    if dag is None:
        raise ViewProblem(404, "No such DAG", f"There is no DAG {dag_id!r}.")
    if task_id not in dag.task_dict:
        raise ViewProblem(404, "No such task", f"DAG {dag_id!r} has no task {task_id!r}.")
    doc = getattr(dag.task_dict[task_id], "doc_md", None)
    if not doc:
        raise ViewProblem(404, "No runbook", f"Task {task_id!r} of DAG {dag_id!r} has no doc_md.")
    return doc
