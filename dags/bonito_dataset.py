"""
### bonito_dataset

Turns unlabeled documents into an instruction-tuning dataset with Bonito:
**extract** -> **chunk** -> **generate** (vLLM, mapped over chunk shards) -> **validate**
(Great Expectations) -> **publish** (Hugging Face Hub layout; uploaded when `hub_repo_id` is set).

Every stage writes Parquet shards and a `_manifest.json` (written last) under
`<store>/<dag_id>/<run_id>/<stage>/`. XCom carries only manifest URIs and counts. A retried
stage whose manifest exists with the same config and inputs is a no-op; otherwise it clears
its folder and redoes its work, so clearing any task is safe.

Connections: `aws_default` (S3 source or store; extra `endpoint_url` for MinIO),
`huggingface_default` (Hub token in the password field; `HF_TOKEN` works too), `bonito_alerts`
(optional webhook, e.g. Slack, for failure and deadline alerts; they are always logged as
`BONITO_ALERT {json}`).

Schedule: with `BONITO_SOURCE` set, a nightly run (`BONITO_SCHEDULE`, default `0 2 * * *`) sweeps
it and processes only documents missing from the ledger. One run at a time. Lineage: every stage
output is an asset (`bonito_dataset/documents` ... `bonito_dataset/dataset`, plus
`hf://datasets/<repo>` when published); each event's extra names the run and its manifest.
The last task, `summarize`, reports counts per stage, tokens/s and GPU-hours.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetAlias, dag, get_current_context, task

from bonito_airflow.alerts import on_task_failure
from bonito_airflow.operators import BonitoGenerateOperator, BonitoPublishOperator
from bonito_airflow.params import run_params
from bonito_airflow.runtime import stage_output, task_runtime

AIRFLOW_HOME = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))

GPU_POOL = "gpu"
GPU_QUEUE = os.environ.get("BONITO_GPU_QUEUE", "gpu")
# The nightly sweep of BONITO_SOURCE (only documents not yet in the ledger); manual runs only without a source.
SCHEDULE = (os.environ.get("BONITO_SCHEDULE", "0 2 * * *") or None) if os.environ.get("BONITO_SOURCE") else None


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
    @task(outlets=[DOCUMENTS], doc_md="""
#### extract
Reads `.txt .md .html .pdf .docx`, and `.jsonl .csv .parquet` or saved HF datasets (column
`text_column`, one document per row), under `source` (folder, file or `s3://` prefix; `include`/
`exclude` globs) into the `documents` table (doc_id = sha256 of the file bytes or row text).
Documents already in the ledger are skipped unless `full_refresh`; with 0 new documents the
downstream tasks skip. Files that can't be read go to `rejects` with a reason (listed in the
log) and the run goes on.
**Common failures:** nothing at all could be extracted (source empty, wrong prefix, every file
rejected: fails without retries; fix the source, then clear); S3 access denied or endpoint
unreachable (check `aws_default`; retried).
**Artifacts:** `<store>/bonito_dataset/<run_id>/extract/` (`documents`, `rejects`). **Safe to clear.**
""")
    def extract() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from bonito_tasks.extract import NothingExtracted, extract as run_extract

        context = get_current_context()
        rt = task_runtime(context)
        try:
            return stage_output(context, run_extract(rt.store, rt.run, rt.config, rt.s3_client_kwargs))
        except NothingExtracted as nothing:  # the same files fail the same way: retrying is pointless
            raise AirflowFailException(str(nothing)) from nothing

    @task(inlets=[DOCUMENTS], outlets=[CHUNKS], doc_md="""
#### chunk
Splits documents at paragraph and sentence ends into chunks of at most `chunk_max_tokens`
tokens of the model's tokenizer, in shards of `chunk_shard_size` chunks (one generate task each).
Skips (and so does everything after it but summarize) when extract found no new documents.
**Common failures:** the tokenizer of `model_id` cannot be loaded (offline worker without the
weights in `HF_HOME`, wrong `model_revision`; retried).
**Artifacts:** `<store>/bonito_dataset/<run_id>/chunk/`. **Safe to clear.**
""")
    def chunk(documents: dict) -> list[dict]:
        """One XCom entry per chunk shard: generate is mapped over this list."""
        from bonito_tasks.chunk import chunk as run_chunk

        if not documents["counts"].get("documents"):  # every document already in the ledger
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"no new documents ({documents['counts'].get('skipped_known', 0)} known)")
        context = get_current_context()
        rt = task_runtime(context)
        manifest = run_chunk(rt.store, rt.run, rt.config, rt.store.read_manifest(documents["manifest"]))
        stage_output(context, manifest)
        return [{"manifest": manifest.uri, "shard": i, "chunks": ref.rows}
                for i, ref in enumerate(manifest.shards_of("chunks"))]

    generate_doc = """
#### generate (one task per chunk shard)
Runs Bonito on vLLM for every chunk x task type, parses each generation into (input, output)
and records every dropped generation with its reason. Results are checkpointed every
`checkpoint_prompts` prompts; a retry resumes after the last checkpoint. The engine is shut
down when the task ends. Pool `gpu` (one slot per GPU), queue `$BONITO_GPU_QUEUE` (`gpu`).
**Common failures:** out of memory (the retry halves max_num_seqs; else lower max_model_len),
model not found (check model_id / model_revision). A task running past `generate_budget_minutes`
raises a `deadline_missed` alert and goes on: look for a stuck engine or an undersized GPU.
**Artifacts:** `<store>/bonito_dataset/<run_id>/generate/shard-NNNNN/`. Clearing one map index
redoes only what that shard lacks.
"""

    @task(inlets=[GENERATIONS], outlets=[EXAMPLES], doc_md="""
#### validate
Runs the Great Expectations suites over all generated examples (joined to their chunk text).
Rows failing a row-level check go to the `quarantine` table with the names of the checks they
failed; the rest go on. The task fails when a dataset threshold (params `min_pass_rate`,
`min_rows`, `max_duplicate_rate`, `max_label_share`) is breached: the log names the check, the
observed value and the threshold (no retries: the same data fails the same way).
**Common failures:** a threshold breach. Open `data_docs/index.html` and `report/quality.html`,
read the quarantine part (`failed_expectations` per row); fix the cause
(model, prompts, params) or, if the data is acceptable, relax the threshold in a new run
(clearing this task re-checks the same rows). Publish never runs after a failed validation.
**Artifacts:** `<store>/bonito_dataset/<run_id>/validate/` (Data Docs, report, result JSON). **Safe to clear.**
""")
    def validate(generated: list[dict]) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from bonito_tasks.validate import ValidationFailed, validate as run_validate

        context = get_current_context()
        rt = task_runtime(context)
        shards = [rt.store.read_manifest(ref["manifest"]) for ref in generated]
        try:
            return stage_output(context, run_validate(rt.store, rt.run, rt.config, shards))
        except ValidationFailed as failed:  # the same data fails the same way: retrying is pointless
            raise AirflowFailException(str(failed)) from failed

    publish_doc = """
#### publish
Writes the dataset in Hugging Face Hub layout (`data/<task_type>/*.parquet`, card, `sources.jsonl`,
quality plots under `assets/`) to the store; when `hub_repo_id` is set uploads it in one commit with
the `huggingface_default` token (`publish_mode`: `overwrite` snapshot, `append` new rows only, `pr`
pull request); when `export_s3_uri` is set copies it there (`aws_default`). Re-running it makes no
new commit. Extra link "Dataset on Hugging Face"; emits an event for `hf://datasets/<repo_id>`
through the asset alias `bonito_dataset/published`.
**Common failures:** token missing or without write access (no retry: fix `huggingface_default`).
**Artifacts:** `<store>/bonito_dataset/<run_id>/publish/`. **Safe to clear.**
"""

    @task(doc_md="""
#### update_ledger
Records this run's documents (content hashes) in `<store>/bonito_dataset/_ledger/` once publish
succeeded; the next run skips them unless `full_refresh` is set. A run that failed earlier
leaves the ledger alone, so its documents are tried again.
**Common failures:** the store is not writable (retried).
**Artifacts:** `<store>/bonito_dataset/_ledger/part-<run_id>.parquet`. **Safe to clear** (rewrites the same part).
""")
    def update_ledger(published: dict, documents: dict) -> dict:
        from bonito_tasks.ledger import update_ledger as run_update_ledger

        rt = task_runtime(get_current_context())
        return run_update_ledger(rt.store, rt.run, rt.store.read_manifest(documents["manifest"]))

    @task(trigger_rule="all_done", on_failure_callback=None, doc_md="""
#### summarize
Runs last, whatever happened before, and reports what each stage committed, read back from the
manifests: documents, rejects (by reason), chunks, generate shards done, examples, dropped
generations, output tokens/s, GPU-hours, rows passed and quarantined, and where the dataset went.
It fails (without a second alert) when another task of the run failed, so the run shows as failed.
**Common failures:** none of its own; a failure here means an earlier task failed (see its alert).
**Artifacts:** this task's log, its XCom `summary`, and `<store>/bonito_dataset/<run_id>/summary.json`.
**Safe to clear** (rewrites the same summary).
""")
    def summarize() -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from bonito_tasks.summary import format_summary, run_summary

        context = get_current_context()
        rt, ti = task_runtime(context), context["ti"]
        summary = run_summary(rt.store, rt.run, rt.config)
        ti.xcom_push(key="summary", value=summary)
        logging.getLogger(__name__).info("%s", format_summary(summary))
        failed = ti.get_ti_count(dag_id=ti.dag_id, run_ids=[ti.run_id], states=["failed", "upstream_failed"])
        if failed:
            raise AirflowFailException(f"{failed} task(s) of this run failed or could not run; see the summary above")

    documents = extract()
    generated = BonitoGenerateOperator.partial(
        task_id="generate", pool=GPU_POOL, queue=GPU_QUEUE, doc_md=generate_doc, inlets=[CHUNKS], outlets=[GENERATIONS]
    ).expand(chunk_shard=chunk(documents))
    published = BonitoPublishOperator(task_id="publish", examples=validate(generated.output), documents=documents,
                                      inlets=[EXAMPLES], outlets=[DATASET, PUBLISHED], doc_md=publish_doc)
    update_ledger(published.output, documents) >> summarize()


bonito_dataset()
