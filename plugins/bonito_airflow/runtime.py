"""What every task needs from its Airflow context: the run config, the run's identity, the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.sdk import Asset, conf
from pydantic import BaseModel, ConfigDict, Field

from bonito_airflow.hooks import S3ConnectionHook
from bonito_airflow.schedule import run_values
from bonito_tasks.config import RunConfig, check_config
from bonito_tasks.contracts import Manifest, RunRef
from bonito_tasks.store import ArtifactStore, open_store, run_prefix


@dataclass
class TaskRuntime:
    config: RunConfig
    run: RunRef
    store: ArtifactStore
    s3_client_kwargs: dict[str, Any]

    @property
    def folder(self) -> str:
        """The run's folder in the store: <store>/<dag_id>/<run_id>, each sanitised to one path
        segment (every character but letters, digits, '.', '_' and '-' becomes '_')."""
        return self.store.uri(run_prefix(self.run))


def checked_config(context: dict) -> RunConfig:
    """The run's config (its params, with a scheduled run's settings, see schedule.py), checked
    again in this task: a config RunConfig rejects raises ConfigRejected, a source, store or export
    outside the deployment's allowed locations LocationRefused (bonito_airflow.access); neither is
    retried. check_params refused them first; this keeps a task run on its own from going around it."""
    from bonito_airflow.access import allowed_locations

    config = check_config(run_values(context))
    allowed_locations().check(config, context["dag_run"].dag_id)
    return config


def task_runtime(context: dict, aws_conn_id: str = "aws_default") -> TaskRuntime:
    """The task's runtime, from `checked_config`."""
    config = checked_config(context)
    dag_run = context["dag_run"]
    base_url = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    run = RunRef(dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                 run_url=f"{base_url}/dags/{dag_run.dag_id}/runs/{dag_run.run_id}")
    uris = config.store + config.source + (config.export_s3_uri or "")
    s3_kwargs = S3ConnectionHook(aws_conn_id).client_kwargs() if "s3://" in uris else {}
    store = open_store(config.store, **(s3_kwargs if config.store.startswith("s3://") else {}))
    return TaskRuntime(config, run, store, s3_kwargs)


def run_folder(config: RunConfig, dag_id: str, run_id: str) -> str:
    """The run's folder, as TaskRuntime.folder gives it, without connecting to the store: what
    the tasks that do not touch the store (check_params, approve) log."""
    from bonito_tasks.store import LocalStore, S3Store

    root = S3Store(config.store, client=False) if config.store.startswith("s3://") else LocalStore(config.store)
    return root.uri(run_prefix(RunRef(dag_id=dag_id, run_id=run_id)))


class StageRef(BaseModel):
    """What a stage task returns to XCom: its manifest's URI and counts, never data (the publish
    task adds where it published)."""

    model_config = ConfigDict(extra="allow")

    manifest: str
    counts: dict[str, int] = Field(default_factory=dict)


class PartitionRef(BaseModel):
    """One entry of the plan task's XCom: extract and chunk are mapped over them."""

    model_config = ConfigDict(extra="forbid")

    manifest: str  # the plan's
    partition: int


class GenerateShardRef(BaseModel):
    """One entry of the plan_shards task's XCom: generate is mapped over them."""

    model_config = ConfigDict(extra="forbid")

    manifest: str  # the chunk stage's
    shard: int
    chunks: int


def stage_output(context: dict, manifest: Manifest, **extra: Any) -> dict[str, Any]:
    """What goes to XCom: the manifest URI and counts (rows per table and the stage's integer
    metrics), never data. The same goes into the extra of the event of each Asset among the task's
    outlets, so the asset's history leads to the run's artifacts."""
    ref = StageRef(manifest=manifest.uri, counts=manifest.counts | manifest.metrics.counts(), **extra).model_dump()
    for outlet in context["task"].outlets:
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra = {"run_id": manifest.run_id, **ref}
    return ref
