"""Operators: one per task of the bonito_dataset DAG, each a thin wrapper over one bonito_tasks call.

The idiom, in the Airflow providers' style (keyword-only arguments, `template_fields` for the
upstream XCom references, hooks for connections):

- `BonitoOperator.execute` builds the task's runtime (`task_runtime`: the run config from the
  params, the run's identity, the store; S3 credentials from `aws_conn_id`) and calls
  `run(rt, context)`. A `bonito_tasks.errors.PermanentFailure` raised there fails the task without
  retries (`AirflowFailException`, same message); any other exception propagates and is retried.
- `BonitoStageOperator` is the one for a pipeline stage: `run_stage(rt, context)` returns the
  stage's committed `Manifest`, and the task returns its URI and counts (`stage_output`), which
  also go into the event of each Asset among its outlets. `to_xcom` may add to that.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator, XComArg
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from bonito_airflow.access import allowed_locations
from bonito_airflow.alerts import Deadline
from bonito_airflow.compat import under_task_supervisor
from bonito_airflow.hooks import HuggingFaceHook, VllmServerHook
from bonito_airflow.links import HuggingFaceDatasetLink
from bonito_airflow.runtime import (
    GenerateShardRef,
    PartitionRef,
    StageRef,
    TaskRuntime,
    run_folder,
    stage_output,
    task_runtime,
)
from bonito_airflow.schedule import resolve_run_values
from bonito_airflow.templated import Templated, resolved
from bonito_airflow.view.links import DataDocsLink, QualityReportLink
from bonito_tasks.config import check_config
from bonito_tasks.contracts import (
    Approval,
    ChunkMetrics,
    CompareMetrics,
    Manifest,
    PlanMetrics,
    PublishMetrics,
    StageName,
)
from bonito_tasks.errors import PermanentFailure

STAGE_OUTPUT_KEY = "stage_output"  # XCom key of a stage's own output when its return value lists what to map over


class BonitoOperator(BaseOperator):
    """A task of the bonito_dataset DAG: `run(rt, context)` with the task's runtime; a
    `PermanentFailure` fails the task without retries, anything else is retried."""

    def __init__(self, *, aws_conn_id: str = "aws_default", **kwargs: Any):
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    def execute(self, context) -> Any:
        try:
            rt = task_runtime(context, self.aws_conn_id)  # a config RunConfig rejects is permanent too
            self.runtime = rt  # for the OpenLineage facets (lineage.py), read after the task ran
            self.log.info("run folder: %s", rt.folder)
            return self.run(rt, context)
        except PermanentFailure as failure:  # the same inputs fail the same way: retrying is pointless
            raise AirflowFailException(str(failure)) from failure

    @abstractmethod
    def run(self, rt: TaskRuntime, context) -> Any:
        """The task's work; its return value goes to XCom."""


class BonitoStageOperator(BonitoOperator):
    """A pipeline stage: `run_stage(rt, context)` returns the stage's committed manifest; the task
    returns its URI and counts (never data)."""

    def run(self, rt: TaskRuntime, context) -> Any:
        from bonito_airflow.lineage import input_refs

        self.lineage_inputs = input_refs(self)  # the manifests it reads, for its OpenLineage inputs
        manifest = self.run_stage(rt, context)
        self.lineage_run = (rt, manifest)
        return self.to_xcom(context, rt, manifest)

    def get_openlineage_facets_on_complete(self, task_instance):
        """Inputs, outputs (schema, statistics) and GX assertions, for the OpenLineage provider."""
        from bonito_airflow.lineage import stage_lineage

        return stage_lineage(self, task_instance)

    def get_openlineage_facets_on_failure(self, task_instance):
        from bonito_airflow.lineage import failed_stage_lineage

        return failed_stage_lineage(self, task_instance)

    @abstractmethod
    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        """Run the stage (or find it committed) and return its manifest."""

    def to_xcom(self, context, rt: TaskRuntime, manifest: Manifest) -> Any:
        """The task's return value: the manifest URI and counts, also given to its Asset events."""
        return stage_output(context, manifest)


class BonitoPlanOperator(BonitoStageOperator):
    """Lists the run's `source` once and splits it into partitions balanced by bytes. Returns one
    entry per partition (map extract and chunk over it); its own output goes to XCom key
    `stage_output`."""

    ui_color = "#d5e8d4"

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.extract.plan import plan

        return plan(rt.store, rt.run, rt.config, rt.s3_client_kwargs)

    def to_xcom(self, context, rt: TaskRuntime, manifest: Manifest) -> list[dict[str, Any]]:
        context["ti"].xcom_push(key=STAGE_OUTPUT_KEY, value=super().to_xcom(context, rt, manifest))
        return [PartitionRef(manifest=manifest.uri, partition=i).model_dump()
                for i in range(manifest.metrics_as(PlanMetrics).partitions)]


class BonitoExtractOperator(BonitoStageOperator):
    """Extracts the documents of one `partition` of the plan (map it over the plan task's output)
    that the ledger does not know yet. A partition whose files are all rejected succeeds."""

    template_fields = ("partition",)
    ui_color = "#d5e8d4"

    def __init__(self, *, partition: Templated[dict[str, Any]], **kwargs: Any):
        super().__init__(**kwargs)
        self.partition = partition

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.extract import extract_partition

        partition = PartitionRef.model_validate(resolved(self.partition))
        plan = rt.store.read_manifest(partition.manifest)
        return extract_partition(rt.store, rt.run, rt.config, plan, partition.partition, rt.s3_client_kwargs)


class BonitoCollectDocumentsOperator(BonitoStageOperator):
    """Makes the extract `partitions` (the mapped extract tasks' outputs) one documents stage.
    Fails without retries when no partition found a document."""

    template_fields = ("partitions",)
    ui_color = "#d5e8d4"

    def __init__(self, *, partitions: Templated[list[dict[str, Any]]], **kwargs: Any):
        super().__init__(**kwargs)
        self.partitions = partitions

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.extract import collect_documents

        manifests = [rt.store.read_manifest(StageRef.model_validate(ref).manifest) for ref in resolved(self.partitions)]
        return collect_documents(rt.store, rt.run, rt.config, manifests)


class BonitoChunkOperator(BonitoStageOperator):
    """Chunks the `documents` (the collect_documents output) of one `partition` (map it over the
    plan task's output). Skips when there is no new document."""

    template_fields = ("documents", "partition")
    ui_color = "#dae8fc"

    def __init__(self, *, documents: Templated[dict[str, Any]], partition: Templated[dict[str, Any]], **kwargs: Any):
        super().__init__(**kwargs)
        self.documents, self.partition = documents, partition

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.chunk import chunk_partition

        ref = StageRef.model_validate(resolved(self.documents))
        if not ref.counts.get("documents"):  # every document already in the ledger
            raise AirflowSkipException(f"no new documents ({ref.counts.get('skipped_known', 0)} known)")
        documents = rt.store.read_manifest(ref.manifest)
        partition = PartitionRef.model_validate(resolved(self.partition)).partition
        return chunk_partition(rt.store, rt.run, rt.config, documents, partition)


class BonitoPlanShardsOperator(BonitoStageOperator):
    """Makes the chunk `partitions` (the mapped chunk tasks' outputs) one chunk stage: exact
    duplicates kept once, chunks grouped into generate shards. Returns one entry per generate
    shard (map generate over it: `.expand(chunk_shard=op.output)`); the stage's own output goes to
    XCom key `stage_output` (`op.stage_ref`)."""

    template_fields = ("partitions",)
    ui_color = "#dae8fc"

    def __init__(self, *, partitions: Templated[list[dict[str, Any]]], **kwargs: Any):
        super().__init__(**kwargs)
        self.partitions = partitions

    @property
    def stage_ref(self) -> XComArg:
        """The XComArg of this stage's manifest URI and counts, for downstream tasks."""
        return XComArg(self, key=STAGE_OUTPUT_KEY)

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.chunk import plan_shards

        manifests = [rt.store.read_manifest(StageRef.model_validate(ref).manifest) for ref in resolved(self.partitions)]
        return plan_shards(rt.store, rt.run, rt.config, manifests)

    def to_xcom(self, context, rt: TaskRuntime, manifest: Manifest) -> list[dict[str, Any]]:
        from bonito_tasks.contracts import generate_shard_parts

        context["ti"].xcom_push(key=STAGE_OUTPUT_KEY, value=super().to_xcom(context, rt, manifest))
        refs = manifest.shards_of("chunks")
        return [GenerateShardRef(manifest=manifest.uri, shard=i,
                                 chunks=sum(refs[p].rows for p in generate_shard_parts(manifest, i))).model_dump()
                for i in range(manifest.metrics_as(ChunkMetrics).shards)]


class BonitoGenerateOperator(BonitoStageOperator):
    """Generates Bonito examples for one chunk shard (map it over the chunk task's output).

    backend "vllm" runs the engine in-process (one GPU slot: pool `gpu`, the GPU workers' queue);
    backend "server" calls the OpenAI-compatible server of connection `server_conn_id`.
    Resumes from the shard's last checkpoint on retry; the engine is always shut down.
    A configuration error the server rejects (a PermanentFailure) fails the task without retries.
    """

    template_fields = ("chunk_shard",)
    ui_color = "#f6d8a8"

    def __init__(self, *, chunk_shard: Templated[dict[str, Any]], server_conn_id: str = "bonito_vllm_default",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.chunk_shard = chunk_shard
        self.server_conn_id = server_conn_id

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.generate.run import generate_shard

        chunk_shard = GenerateShardRef.model_validate(resolved(self.chunk_shard))
        chunks = rt.store.read_manifest(chunk_shard.manifest)
        shard = chunk_shard.shard
        with Deadline(context, f"generate shard {shard}", rt.config.generate_budget_minutes * 60):
            if rt.config.backend == "server":
                with self._server_engine(rt.config) as engine:
                    return generate_shard(rt.store, rt.run, rt.config, chunks, shard, engine=engine)
            if _no_child_processes():
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
            return generate_shard(rt.store, rt.run, rt.config, chunks, shard)

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

    return under_task_supervisor() or multiprocessing.current_process().daemon


class BonitoValidateShardOperator(BonitoStageOperator):
    """The row checks of one generate shard (map it over the generate tasks' outputs): the GX row
    suite against the `chunks` the shard came from (the chunk stage's output), its quarantine and
    passed rows, and the numbers the `validate` task adds up. A broken table contract fails the
    task without retries."""

    template_fields = ("generated", "chunks")
    ui_color = "#e1d5e7"
    stage_name = StageName.VALIDATE  # a partition of validate (its folder, its failures)

    def __init__(self, *, generated: Templated[dict[str, Any]], chunks: Templated[dict[str, Any]], **kwargs: Any):
        super().__init__(**kwargs)
        self.generated, self.chunks = generated, chunks

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.validate import validate_shard
        from bonito_tasks.validate.run import partition_of

        generated = rt.store.read_manifest(resolved(self.generated)["manifest"])
        chunks = rt.store.read_manifest(resolved(self.chunks)["manifest"])
        shard = partition_of(generated, context["ti"].map_index)
        return validate_shard(rt.store, rt.run, rt.config, generated, chunks, shard)


class BonitoValidateOperator(BonitoStageOperator):
    """The run's verdict over the `partitions` (the validate_shard tasks' outputs): pairs repeating
    across shards quarantined, the dataset thresholds over the added-up numbers, one Data Docs site
    and quality report. A breached dataset threshold fails the task without retries."""

    template_fields = ("partitions",)
    operator_extra_links = (QualityReportLink(), DataDocsLink())  # the Dataset view, also after a failure
    ui_color = "#e1d5e7"

    def __init__(self, *, partitions: Templated[list[dict[str, Any]]], **kwargs: Any):
        super().__init__(**kwargs)
        self.partitions = partitions

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.validate import combine_validated

        partitions = [rt.store.read_manifest(ref["manifest"]) for ref in resolved(self.partitions)]
        return combine_validated(rt.store, rt.run, rt.config, partitions)


class BonitoCompareOperator(BonitoStageOperator):
    """Tonight's scorecard and its drift checks against the last release published to the same
    target (bonito_tasks.release; token from connection `hf_conn_id` or HF_TOKEN). Drift beyond a
    failure threshold fails the task without retries, naming each check; with the approval gate on
    it passes with verdict "review" and the approver sees the comparison."""

    template_fields = ("examples",)
    ui_color = "#d5e8d4"

    def __init__(self, *, examples: Templated[dict[str, Any]], hf_conn_id: str = "huggingface_default",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.examples, self.hf_conn_id = examples, hf_conn_id

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_airflow.approval import approval_policy, approval_required
        from bonito_airflow.schedule import is_scheduled
        from bonito_tasks.compare import Compare

        token = HuggingFaceHook(self.hf_conn_id).get_token() if rt.config.hub_repo_id else None
        gated = approval_required(rt.config, is_scheduled(context), approval_policy()) is not None
        examples = StageRef.model_validate(resolved(self.examples))
        return Compare(rt.store, rt.run, rt.config, rt.store.read_manifest(examples.manifest), token, gated=gated,
                       s3_client_kwargs=rt.s3_client_kwargs).execute()

    def to_xcom(self, context, rt: TaskRuntime, manifest: Manifest) -> dict[str, Any]:
        """The manifest reference, the verdict and the comparison as the approver reads it."""
        from bonito_tasks.compare import compare_markdown

        metrics = manifest.metrics_as(CompareMetrics)
        return stage_output(context, manifest, verdict=metrics.verdict, review=compare_markdown(metrics))


PUBLISHED_KEYS = ("dataset_uri", "hub_url", "hub_commit_sha", "hub_pr_url", "export_uri")  # to XCom


class BonitoPublishOperator(BonitoStageOperator):
    """Publishes the validated examples: the dataset folder in the store, the Hub repo when
    `hub_repo_id` is set (token from connection `hf_conn_id` or HF_TOKEN), the S3 export when
    `export_s3_uri` is set (credentials from `aws_conn_id`).

    Returns the manifest URI, counts, `dataset_uri`, `hub_url`, `hub_commit_sha`, `hub_pr_url` and
    `export_uri` (never the token). Each AssetAlias among `outlets` gets an event for the published
    dataset, `hf://datasets/<repo_id>` (and the export's `s3://` URI), with the commit in its extra.
    """

    template_fields = ("examples", "documents", "approval")
    operator_extra_links = (HuggingFaceDatasetLink(),)
    ui_color = "#ffd21e"

    def __init__(self, *, examples: Templated[dict[str, Any]], documents: Templated[dict[str, Any]],
                 hf_conn_id: str = "huggingface_default", approval: Templated[dict[str, Any] | None] = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.examples, self.documents = examples, documents
        self.hf_conn_id = hf_conn_id
        self.approval = approval  # the approval gate's decision (bonito_airflow.approval), for manifest and card

    def run_stage(self, rt: TaskRuntime, context) -> Manifest:
        from bonito_tasks.publish import publish

        token = HuggingFaceHook(self.hf_conn_id).get_token() if rt.config.hub_repo_id else None
        approval = resolved(self.approval)
        examples, documents = (StageRef.model_validate(resolved(ref)) for ref in (self.examples, self.documents))
        return publish(
            rt.store, rt.run, rt.config, rt.store.read_manifest(examples.manifest),
            rt.store.read_manifest(documents.manifest), token, s3_client_kwargs=rt.s3_client_kwargs,
            approval=Approval(**approval) if approval else None,
        )

    def to_xcom(self, context, rt: TaskRuntime, manifest: Manifest) -> dict[str, Any]:
        metrics = manifest.metrics_as(PublishMetrics)
        published = metrics.model_dump(include=set(PUBLISHED_KEYS), exclude_none=True)
        self._asset_events(context, rt.config.hub_repo_id, metrics)
        return stage_output(context, manifest, **published)

    def _asset_events(self, context, repo_id: str | None, metrics: PublishMetrics) -> None:
        extra = {"run_id": context["dag_run"].run_id, "examples": metrics.examples,
                 "examples_added": metrics.examples_added, "publish_mode": metrics.publish_mode}
        assets = []
        if repo_id:
            hub_extra = {"repo_id": repo_id, "revision": metrics.hub_commit_sha, "pr_url": metrics.hub_pr_url}
            assets.append((Asset(uri=f"hf://datasets/{repo_id}"), hub_extra))
        if metrics.export_uri:
            assets.append((Asset(uri=metrics.export_uri), {}))
        for alias in (o for o in self.outlets if isinstance(o, AssetAlias)):
            for asset, asset_extra in assets:
                context["outlet_events"][alias].add(asset, extra=extra | asset_extra)


class BonitoLedgerOperator(BonitoOperator):
    """Records the run's `documents` (the extract task's output) in the ledger, for the run's task
    types and processing target, with its remembered rejects; then compacts the ledger past
    COMPACT_AFTER_PARTS parts. Run it after publish. Its trigger rule defaults to `none_failed`: it
    runs when publish succeeded or was skipped, never when publish failed (the documents are then
    tried again next run). Documents are recorded only when this run's publish stage committed;
    otherwise (nothing new, nothing to publish) only the rejects are. With publish committed it also
    records the MinHash signatures of the run's chunks (`<store>/<dag_id>/_neardup/`), so later runs
    skip chunks this one already generated from."""

    template_fields = ("documents",)

    def __init__(self, *, documents: Templated[dict[str, Any]], **kwargs: Any):
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.documents = documents

    def run(self, rt: TaskRuntime, context) -> dict[str, Any]:
        from bonito_tasks.ledger import update_ledger
        from bonito_tasks.stage import StageWriter

        published = rt.store.exists(StageWriter(rt.store, rt.run, StageName.PUBLISH).manifest_key)
        documents = rt.store.read_manifest(StageRef.model_validate(resolved(self.documents)).manifest)
        result = update_ledger(rt.store, rt.run, documents, rt.config, published=published)
        if published:  # the chunks this run generated from, for later runs' near-duplicate check
            from bonito_tasks.chunk.neardup import record_signatures

            signatures = record_signatures(rt.store, rt.run, rt.config)
            result.neardup_part, result.signatures_recorded = signatures.neardup_part, signatures.signatures_recorded
            result.neardup_compaction = signatures.neardup_compaction
        return result.model_dump(mode="json")


class BonitoSummaryOperator(BonitoOperator):
    """Summarizes the run from its manifests: logs it, pushes it to XCom key `summary`, and fails
    (without retries) when another task of the run failed, so that the run shows as failed. Give it
    trigger_rule="all_done"."""

    def run(self, rt: TaskRuntime, context) -> None:
        from bonito_tasks.summary import format_summary, run_summary

        ti = context["ti"]
        summary = run_summary(rt.store, rt.run, rt.config)
        ti.xcom_push(key="summary", value=summary.model_dump(mode="json"))
        self.log.info("%s", format_summary(summary))
        failed = ti.get_ti_count(dag_id=ti.dag_id, run_ids=[ti.run_id], states=["failed", "upstream_failed"])
        if failed:
            cause = ""
            if summary.cause:  # the failed stage and the first line of its cause
                first = (summary.cause.message.strip().splitlines() or [summary.cause.error])[0]
                cause = f"; {summary.cause.stage} failed: {first[:500]}"
            raise AirflowFailException(f"{failed} task(s) of this run failed or could not run{cause}; "
                                       "see the summary above")


class BonitoCheckParamsOperator(BaseOperator):
    """The run's first task, quick and reading no data: resolves the run's values (a scheduled run's
    settings over its params; see schedule.py) and checks them as one RunConfig: every field's
    bounds and the rules between fields (chunk + prompt + max_tokens within max_model_len, overlap
    under half a chunk), and that its source, store and export are where the deployment allows
    (bonito_airflow.access). A rejection names each param at fault, with its value, and fails the
    task without retries, so nothing downstream runs.

    Returns `{"run_type", "settings" (what was laid over the params), "config_sha256"}`; the later
    tasks of a scheduled run read `settings` from it."""

    ui_color = "#f5f5f5"

    def __init__(self, *, schedule_settings: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.schedule_settings = dict(schedule_settings or {})

    def execute(self, context) -> dict[str, Any]:
        dag_run = context["dag_run"]
        run_type = getattr(dag_run, "run_type", "manual")
        run_type = getattr(run_type, "value", run_type)  # DagRunType is a str enum
        try:
            values, settings = resolve_run_values(context, self.schedule_settings)
            origin = "scheduled run (params + scheduled settings)" if settings else "params"
            config = check_config(values, origin)
            allowed_locations().check(config, dag_run.dag_id)  # source, store, export: where the deployment allows
        except PermanentFailure as failure:
            raise AirflowFailException(str(failure)) from failure
        self.log.info("run folder: %s", run_folder(config, dag_run.dag_id, dag_run.run_id))
        if settings:
            self.log.info("scheduled run: settings applied over the form's defaults: %s", settings)
        self.log.info("run %s (%s): params accepted, config sha256 %s", dag_run.run_id, run_type, config.sha256())
        return {"run_type": run_type, "settings": settings, "config_sha256": config.sha256()}
