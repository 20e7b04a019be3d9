"""Operators: thin wrappers over bonito_tasks stage calls."""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from bonito_airflow.alerts import Deadline
from bonito_airflow.hooks import HuggingFaceHook, VllmServerHook
from bonito_airflow.links import HuggingFaceDatasetLink
from bonito_airflow.runtime import stage_output, task_runtime


class BonitoGenerateOperator(BaseOperator):
    """Generates Bonito examples for one chunk shard (map it over the chunk task's output).

    backend "vllm" runs the engine in-process (one GPU slot: pool `gpu`, the GPU workers' queue);
    backend "server" calls the OpenAI-compatible server of connection `server_conn_id`.
    Resumes from the shard's last checkpoint on retry; the engine is always shut down.
    A configuration error the server rejects fails the task without retries.
    """

    template_fields = ("chunk_shard",)
    ui_color = "#f6d8a8"

    def __init__(self, *, chunk_shard: dict[str, Any], aws_conn_id: str = "aws_default",
                 server_conn_id: str = "bonito_vllm_default", **kwargs: Any):
        super().__init__(**kwargs)
        self.chunk_shard = chunk_shard
        self.aws_conn_id = aws_conn_id
        self.server_conn_id = server_conn_id

    def execute(self, context) -> dict[str, Any]:
        from bonito_tasks.generate.engine import EngineFailure
        from bonito_tasks.generate.run import generate_shard

        rt = task_runtime(context, self.aws_conn_id)
        chunks = rt.store.read_manifest(self.chunk_shard["manifest"])
        shard = self.chunk_shard["shard"]
        try:
            with Deadline(context, f"generate shard {shard}", rt.config.generate_budget_minutes * 60):
                if rt.config.backend == "server":
                    with self._server_engine(rt.config) as engine:
                        manifest = generate_shard(rt.store, rt.run, rt.config, chunks, shard, engine=engine)
                else:
                    if _no_child_processes():
                        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
                    manifest = generate_shard(rt.store, rt.run, rt.config, chunks, shard)
        except EngineFailure as failure:
            if failure.kind == "rejected":
                raise AirflowFailException(str(failure)) from failure
            raise
        return stage_output(context, manifest)

    def _server_engine(self, config):
        from bonito_tasks.generate.server import OpenAICompletionsEngine

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        url, api_key = VllmServerHook(self.server_conn_id).endpoint()
        return OpenAICompletionsEngine(config, url, api_key=api_key, concurrency=config.server_concurrency,
                                       served_model_name=config.served_model_name)


def _no_child_processes() -> bool:
    """Whether vLLM's engine-core child process cannot start here. Under Airflow's task supervisor
    (any executor) a spawned child re-imports the `airflow` entry point, whose metadata DB URL the
    supervisor has blanked in the environment, and dies; a daemonic process (a Celery prefork pool
    worker) may not have children at all. `dag.test()` runs tasks in its own process: neither holds."""
    import multiprocessing

    blanked_db = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").startswith("airflow-db-not-allowed")
    return blanked_db or multiprocessing.current_process().daemon


PUBLISHED_KEYS = ("dataset_uri", "hub_url", "hub_commit_sha", "hub_pr_url", "export_uri")  # to XCom


class BonitoPublishOperator(BaseOperator):
    """Publishes the validated examples: the dataset folder in the store, the Hub repo when
    `hub_repo_id` is set (token from connection `hf_conn_id` or HF_TOKEN), the S3 export when
    `export_s3_uri` is set (credentials from `aws_conn_id`).

    Returns the manifest URI, counts, `dataset_uri`, `hub_url`, `hub_commit_sha`, `hub_pr_url` and
    `export_uri` (never the token). Each AssetAlias among `outlets` gets an event for the published
    dataset, `hf://datasets/<repo_id>` (and the export's `s3://` URI), with the commit in its extra.
    """

    template_fields = ("examples", "documents")
    operator_extra_links = (HuggingFaceDatasetLink(),)
    ui_color = "#ffd21e"

    def __init__(
        self,
        *,
        examples: dict[str, Any],
        documents: dict[str, Any],
        hf_conn_id: str = "huggingface_default",
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.examples, self.documents = examples, documents
        self.hf_conn_id, self.aws_conn_id = hf_conn_id, aws_conn_id

    def execute(self, context) -> dict[str, Any]:
        from bonito_tasks.publish import publish

        rt = task_runtime(context, self.aws_conn_id)
        token = HuggingFaceHook(self.hf_conn_id).get_token() if rt.config.hub_repo_id else None
        manifest = publish(
            rt.store, rt.run, rt.config, rt.store.read_manifest(self.examples["manifest"]),
            rt.store.read_manifest(self.documents["manifest"]), token, s3_client_kwargs=rt.s3_client_kwargs,
        )
        published = {k: manifest.metrics[k] for k in PUBLISHED_KEYS if k in manifest.metrics}
        self._asset_events(context, rt.config.hub_repo_id, manifest.metrics)
        return stage_output(context, manifest, **published)

    def _asset_events(self, context, repo_id: str | None, metrics: dict[str, Any]) -> None:
        extra = {"run_id": context["dag_run"].run_id, "examples": metrics["examples"],
                 "examples_added": metrics["examples_added"], "publish_mode": metrics["publish_mode"]}
        assets = []
        if repo_id:
            hub_extra = {"repo_id": repo_id, "revision": metrics["hub_commit_sha"], "pr_url": metrics.get("hub_pr_url")}
            assets.append((Asset(uri=f"hf://datasets/{repo_id}"), hub_extra))
        if metrics.get("export_uri"):
            assets.append((Asset(uri=metrics["export_uri"]), {}))
        for alias in (o for o in self.outlets if isinstance(o, AssetAlias)):
            for asset, asset_extra in assets:
                context["outlet_events"][alias].add(asset, extra=extra | asset_extra)
