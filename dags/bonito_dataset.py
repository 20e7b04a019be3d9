"""
### bonito_dataset

Turns unlabeled documents into an instruction-tuning dataset with Bonito: **extract** -> **chunk** ->
**generate** (vLLM, one task per chunk shard) -> **validate** (Great Expectations) -> **publish**
(Hugging Face Hub layout) -> **update_ledger**; **summarize** reports the run, whatever happened.
Each task's Docs tab holds its runbook (`dags/runbooks/<task_id>.md`).

Every stage commits Parquet shards and a `_manifest.json` under `<store>/<dag_id>/<run_id>/<stage>/`;
XCom carries only manifest URIs and counts. Connections: `aws_default`, `huggingface_default`,
`bonito_alerts` (optional webhook), `bonito_vllm_default` (backend `server`). With `BONITO_SOURCE`
set, a nightly run (`BONITO_SCHEDULE`) processes the documents missing from the ledger.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetAlias, dag

from bonito_airflow.alerts import on_task_failure
from bonito_airflow.operators import (
    BonitoChunkOperator,
    BonitoExtractOperator,
    BonitoGenerateOperator,
    BonitoLedgerOperator,
    BonitoPublishOperator,
    BonitoSummaryOperator,
    BonitoValidateOperator,
)
from bonito_airflow.params import run_params

AIRFLOW_HOME = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
RUNBOOKS = Path(__file__).parent / "runbooks"

GPU_POOL = "gpu"
GPU_QUEUE = os.environ.get("BONITO_GPU_QUEUE", "gpu")
# The nightly sweep of BONITO_SOURCE (only documents not yet in the ledger); manual runs only without a source.
SCHEDULE = (os.environ.get("BONITO_SCHEDULE", "0 2 * * *") or None) if os.environ.get("BONITO_SOURCE") else None


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
    params=run_params(
        source=os.environ.get("BONITO_SOURCE", ""),
        store=os.environ.get("BONITO_STORE", str(AIRFLOW_HOME / "bonito-store")),
        model_id=os.environ.get("BONITO_MODEL", "BatsResearch/bonito-v1"),
    ),
    doc_md=__doc__,
    tags=["bonito", "synthetic-data"],
)
def bonito_dataset():
    extract = BonitoExtractOperator(task_id="extract", outlets=[DOCUMENTS], doc_md=runbook("extract"))
    chunk = BonitoChunkOperator(task_id="chunk", documents=extract.output, inlets=[DOCUMENTS], outlets=[CHUNKS],
                                doc_md=runbook("chunk"))
    generate = BonitoGenerateOperator.partial(
        task_id="generate", pool=GPU_POOL, queue=GPU_QUEUE, inlets=[CHUNKS], outlets=[GENERATIONS],
        doc_md=runbook("generate"),
    ).expand(chunk_shard=chunk.output)  # one task per chunk shard
    validate = BonitoValidateOperator(task_id="validate", generated=generate.output, chunks=chunk.stage_ref,
                                      inlets=[GENERATIONS], outlets=[EXAMPLES], doc_md=runbook("validate"))
    publish = BonitoPublishOperator(task_id="publish", examples=validate.output, documents=extract.output,
                                    inlets=[EXAMPLES], outlets=[DATASET, PUBLISHED], doc_md=runbook("publish"))
    update_ledger = BonitoLedgerOperator(task_id="update_ledger", documents=extract.output,
                                         doc_md=runbook("update_ledger"))
    summarize = BonitoSummaryOperator(task_id="summarize", trigger_rule="all_done", on_failure_callback=None,
                                      doc_md=runbook("summarize"))
    publish >> update_ledger >> summarize


bonito_dataset()
