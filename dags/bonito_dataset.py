"""
### bonito_dataset

Turns unlabeled documents into an instruction-tuning dataset with Bonito: **check_params** -> **extract** ->
**chunk** -> **generate** (vLLM, one task per chunk shard) -> **validate_shard** (Great Expectations row checks,
one task per generate shard) -> **validate** (the run's verdict) -> **compare** (drift against the last
release) -> **publish**
(Hugging Face Hub layout) -> **update_ledger**; **summarize** reports the run, whatever happened.
Each task's Docs tab holds its runbook (`dags/runbooks/<task_id>.md`).

Every stage commits Parquet shards and a `_manifest.json` under `<run folder>/<stage>/` (`<run folder>`: the
`run folder:` line of every task's log); XCom carries only manifest URIs and counts.
Connections: `aws_default`, `huggingface_default`, `bonito_alerts` (optional webhook), `bonito_vllm_default`
(backend `server`). With `BONITO_SOURCE` set, a nightly run (`BONITO_SCHEDULE`) processes the documents
missing from the ledger.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetAlias, dag

from bonito_airflow.alerts import on_task_failure
from bonito_airflow.approval import BonitoApprovalOperator
from bonito_airflow.operators import (
    BonitoCheckParamsOperator,
    BonitoChunkOperator,
    BonitoCollectDocumentsOperator,
    BonitoCompareOperator,
    BonitoExtractOperator,
    BonitoGenerateOperator,
    BonitoLedgerOperator,
    BonitoPlanOperator,
    BonitoPlanShardsOperator,
    BonitoPublishOperator,
    BonitoSummaryOperator,
    BonitoValidateOperator,
    BonitoValidateShardOperator,
)
from bonito_airflow.params import env_defaults, run_params
from bonito_airflow.schedule import CHECK_TASK_ID, ENV_VAR, load_schedule_settings, schedule_doc

AIRFLOW_HOME = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
RUNBOOKS = Path(__file__).parent / "runbooks"

GPU_POOL = "gpu"
GPU_QUEUE = os.environ.get("BONITO_GPU_QUEUE", "gpu")
# The nightly sweep of BONITO_SOURCE (only documents not yet in the ledger); manual runs only without a source.
SCHEDULE = (os.environ.get("BONITO_SCHEDULE", "0 2 * * *") or None) if os.environ.get("BONITO_SOURCE") else None
PARAMS = run_params(**env_defaults(os.environ, AIRFLOW_HOME))  # the trigger form
# Scheduled runs' own settings (RunConfig fields over the form's defaults; see bonito_airflow/schedule.py).
# Invalid JSON, an unknown field or a rejected value fails the import here, naming the field.
SCHEDULE_SETTINGS = load_schedule_settings(os.environ.get(ENV_VAR), {k: p.value for k, p in PARAMS.items()})


def runbook(task_id: str) -> str:
    """A task's runbook, shown as its Docs in the UI: dags/runbooks/<task_id>.md."""
    return (RUNBOOKS / f"{task_id}.md").read_text(encoding="utf-8")


def _stage_asset(table: str) -> Asset:
    """One asset per stage output; each event's extra names the run and its manifest."""
    return Asset(name=f"bonito_dataset/{table}", uri=f"bonito://bonito_dataset/{table}", group="bonito")


DOCUMENTS, CHUNKS, GENERATIONS, EXAMPLES, DATASET = map(
    _stage_asset, ("documents", "chunks", "generations", "examples", "dataset"))
# Publish adds an event for hf://datasets/<repo_id> (hub_repo_id is a run param) through this alias.
PUBLISHED = AssetAlias("bonito_dataset/published")
DEFAULT_ARGS = dict(retries=2, retry_delay=timedelta(seconds=30), retry_exponential_backoff=True,
                    max_retry_delay=timedelta(minutes=10), on_failure_callback=on_task_failure)


@dag(
    dag_id="bonito_dataset",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share the ledger and the GPUs
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    doc_md=f"{__doc__}\n{schedule_doc(SCHEDULE, SCHEDULE_SETTINGS)}\n",
    tags=["bonito", "synthetic-data"],
)
def bonito_dataset():
    check_params = BonitoCheckParamsOperator(task_id=CHECK_TASK_ID, schedule_settings=SCHEDULE_SETTINGS,
                                             doc_md=runbook(CHECK_TASK_ID))
    plan = BonitoPlanOperator(task_id="plan", doc_md=runbook("plan"))
    extract = BonitoExtractOperator.partial(task_id="extract", doc_md=runbook("extract")).expand(
        partition=plan.output)  # one task per partition of the source
    documents = BonitoCollectDocumentsOperator(task_id="collect_documents", partitions=extract.output,
                                               outlets=[DOCUMENTS], doc_md=runbook("collect_documents"))
    chunk = BonitoChunkOperator.partial(task_id="chunk", documents=documents.output, inlets=[DOCUMENTS],
                                        doc_md=runbook("chunk")).expand(partition=plan.output)
    shards = BonitoPlanShardsOperator(task_id="plan_shards", partitions=chunk.output, outlets=[CHUNKS],
                                      doc_md=runbook("plan_shards"))
    generate = BonitoGenerateOperator.partial(
        task_id="generate", pool=GPU_POOL, queue=GPU_QUEUE, inlets=[CHUNKS], outlets=[GENERATIONS],
        doc_md=runbook("generate"),
    ).expand(chunk_shard=shards.output)  # one task per generate shard
    validate_shard = BonitoValidateShardOperator.partial(
        task_id="validate_shard", chunks=shards.stage_ref, inlets=[GENERATIONS], doc_md=runbook("validate_shard"),
    ).expand(generated=generate.output)  # one task per generate shard: the row checks
    validate = BonitoValidateOperator(task_id="validate", partitions=validate_shard.output, outlets=[EXAMPLES],
                                      doc_md=runbook("validate"))
    compare = BonitoCompareOperator(task_id="compare", examples=validate.output, doc_md=runbook("compare"))
    approve = BonitoApprovalOperator(task_id="approve", examples=validate.output, comparison=compare.output,
                                     doc_md=runbook("approve"))
    publish = BonitoPublishOperator(task_id="publish", examples=validate.output, documents=documents.output,
                                    approval=approve.output, inlets=[EXAMPLES], outlets=[DATASET, PUBLISHED],
                                    doc_md=runbook("publish"))
    update_ledger = BonitoLedgerOperator(task_id="update_ledger", documents=documents.output,
                                         doc_md=runbook("update_ledger"))
    summarize = BonitoSummaryOperator(task_id="summarize", trigger_rule="all_done", on_failure_callback=None,
                                      doc_md=runbook("summarize"))
    check_params >> plan
    publish >> update_ledger >> summarize


bonito_dataset()
