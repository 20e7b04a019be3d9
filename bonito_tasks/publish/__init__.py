"""Publish stage: the validated examples as a Hugging Face dataset folder in the store (Parquet
shards per task type, dataset card, sources sidecar), uploaded to the Hub when the run config
names a repo."""

from __future__ import annotations

import logging
import os

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import Manifest, RunRef, sha256_hex
from bonito_tasks.publish.card import render_card
from bonito_tasks.publish.hub import HubCommit, PublishError, RetryPolicy, upload_dataset
from bonito_tasks.publish.layout import (
    CARD_FILE,
    DATA_DIR,
    DEFAULT_ROWS_PER_SHARD,
    SOURCE_COLUMNS,
    SOURCES_FILE,
    sources_jsonl,
    task_splits,
)
from bonito_tasks.store import ArtifactStore, StageWriter

__all__ = ["DATASET_DIR", "STAGE", "HubCommit", "PublishError", "RetryPolicy", "publish", "upload_dataset"]

logger = logging.getLogger(__name__)

STAGE = "publish"
DATASET_DIR = "dataset"  # under the stage folder


def publish(
    store: ArtifactStore,
    run: RunRef,
    config: RunConfig,
    examples: Manifest,
    documents: Manifest,
    token: str | None,
    *,
    endpoint: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
) -> Manifest:
    """Write the dataset folder `<stage>/dataset/` and, when `config.hub_repo_id` is set, make the
    Hub repo hold the same files (one commit, none when it already does). Returns the manifest.

    `examples` is the validate stage's manifest (table "examples"; `metrics["quality"]` goes into
    the card when present), `documents` the extract stage's. `endpoint` defaults to HF_ENDPOINT.
    A re-run with the same config and inputs returns the committed manifest and does nothing.
    """
    writer = StageWriter(store, run, STAGE)
    inputs = [examples, documents]
    if done := writer.reusable(config.sha256(), inputs):
        return done
    if config.hub_repo_id and not token:
        raise PublishError(f"a Hugging Face token with write access to {config.hub_repo_id} is needed to upload")

    rows = store.read_table(examples, "examples")
    if rows.num_rows == 0:
        raise PublishError("the validated examples table is empty: nothing to publish")
    sources = store.read_table(documents, "documents", columns=SOURCE_COLUMNS)
    splits = task_splits(rows, rows_per_shard)
    card = render_card(
        run=run, config=config, splits=splits, examples=rows, documents=sources, quality=examples.metrics.get("quality")
    )
    files = {path: data for split in splits for path, data in split.shards.items()}
    files[SOURCES_FILE] = sources_jsonl(sources)
    files[CARD_FILE] = card.encode()

    writer.begin()
    dataset_key = f"{writer.prefix}/{DATASET_DIR}"
    for path, data in sorted(files.items()):
        store.write_bytes(f"{dataset_key}/{path}", data)
    logger.info("wrote %d files (%d examples) to %s", len(files), rows.num_rows, store.uri(dataset_key))
    metrics = {
        "dataset_uri": store.uri(dataset_key),
        "examples": rows.num_rows,
        "examples_per_task_type": {split.task_type: split.rows for split in splits},
        "files": {path: {"bytes": len(data), "sha256": sha256_hex(data)} for path, data in sorted(files.items())},
    }
    if config.hub_repo_id:
        run_line = f"Run: {run.run_url}" if run.run_url else f"Run: {run.dag_id} / {run.run_id}"
        commit = upload_dataset(
            files,
            repo_id=config.hub_repo_id,
            token=token,
            private=config.hub_private,
            replace_folder=f"{DATA_DIR}/",
            commit_message=f"Publish {rows.num_rows} Bonito examples ({run.run_id})",
            commit_description=f"{run_line}\nExamples per task type: {metrics['examples_per_task_type']}",
            endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None,
            retry=retry,
        )
        metrics |= {"hub_url": commit.repo_url, "hub_commit_sha": commit.commit_sha, "hub_new_commit": commit.created}
    return writer.commit(
        config_sha256=config.sha256(),
        inputs=inputs,
        counts={"examples": rows.num_rows, "documents": sources.num_rows},
        metrics=metrics,
    )
