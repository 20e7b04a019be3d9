"""Publish stage: the validated examples as a Hugging Face dataset (Parquet shards per task type,
dataset card, sources sidecar, quality plots), written to the store and uploaded to the Hub and/or
exported to S3 when the run config names a repo or an export prefix.

Modes (`publish_mode`): "overwrite" makes the dataset this run's snapshot; "append" adds this run's
rows that the dataset does not hold yet, checked against the dataset's index, never its data
(history.py, layout.append_indexed), and the card counts everything; "pr" opens a Hub pull request
with the snapshot instead of committing to main. The store folder holds what the publish wrote (the
whole dataset, or an append's new files). The S3 export writes a complete snapshot, then a pointer
to it (export.py): readers never see a partial export.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    Approval,
    ChunkMetrics,
    CompareMetrics,
    Manifest,
    PublishedFile,
    PublishMetrics,
    QualitySummary,
    RunRef,
    StageName,
    ValidateMetrics,
    sha256_hex,
)
from bonito_tasks.passages import chunk_texts
from bonito_tasks.publish import files as content
from bonito_tasks.publish.card import RowFacts, render_card
from bonito_tasks.publish.export import READ_NOTE as EXPORT_READ_NOTE
from bonito_tasks.publish.export import ExportFiles, export_files, read_export
from bonito_tasks.publish.files import Content
from bonito_tasks.publish.history import HIDDEN_DIR
from bonito_tasks.publish.hub import HUB_RETRY, HubCommit, PublishError, PublishRejected, upload_dataset
from bonito_tasks.publish.layout import (
    ASSETS_DIR,
    CARD_FILE,
    DATA_DIR,
    DEFAULT_ROWS_PER_SHARD,
    SOURCE_COLUMNS,
    SOURCES_FILE,
    ExistingFiles,
    TaskSplit,
    append_indexed,
    merged_sources,
    public_sources,
    sources_jsonl,
    write_splits,
)
from bonito_tasks.release import scorecard_files, tag_name
from bonito_tasks.release.card import changes_section
from bonito_tasks.release.tags import tag_release
from bonito_tasks.retry import RetryPolicy
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore, StoreError, open_store, safe_segment

__all__ = ["DATASET_DIR", "Publish", "HubCommit", "PublishError", "PublishRejected", "publish", "read_export",
           "upload_dataset"]

logger = logging.getLogger(__name__)

DATASET_DIR = "dataset"  # under the stage folder
# Folders a snapshot publish owns: stale files there are deleted (an append's index goes with the data it indexed).
REPLACED = (f"{DATA_DIR}/", f"{ASSETS_DIR}/", f"{HIDDEN_DIR}/")
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


class Publish(Stage):
    """Write the dataset folder `<stage>/dataset/`; when `config.hub_repo_id` is set make the Hub
    repo hold the same files (one commit, none when it already does); when `config.export_s3_uri`
    is set copy them there too (with `s3_client_kwargs`).

    `approval` (the approval gate's decision) goes into the manifest and the card.
    `examples` is the validate stage's manifest (table "examples"; its quality summary goes into
    the card), `documents` the extract stage's; the chunk stage's manifest (filters, passages) is
    read from the run's folder. `endpoint` defaults to HF_ENDPOINT.
    A re-run with the same reuse key returns the committed manifest and does nothing.
    """

    name = StageName.PUBLISH
    reads = (StageName.VALIDATE, StageName.EXTRACT, StageName.CHUNK, StageName.COMPARE)
    config_fields = frozenset({"source", "task_types", "chunk_max_tokens", "hub_repo_id", "hub_private", "license",
                               "license_name", "license_link", "dataset_language", "publish_mode", "export_s3_uri",
                               "example_near_dup_threshold"})

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, examples: Manifest, documents: Manifest,
                 token: str | None, *, endpoint: str | None = None, retry: RetryPolicy = HUB_RETRY,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, s3_client_kwargs: Mapping[str, Any] | None = None,
                 approval: Approval | None = None):
        chunks = StageWriter(store, run, StageName.CHUNK).committed()
        compared = StageWriter(store, run, StageName.COMPARE).committed()  # the release's scorecard (#24)
        super().__init__(store, run, config, [examples, documents, *([chunks] if chunks else []),
                                              *([compared] if compared else [])])
        self.compare = compared.metrics if compared and isinstance(compared.metrics, CompareMetrics) else None
        self.examples, self.documents, self.chunks, self.token = examples, documents, chunks, token
        self.endpoint, self.retry, self.rows_per_shard = endpoint, retry, rows_per_shard
        self.s3_client_kwargs, self.approval = dict(s3_client_kwargs or {}), approval
        config = self.config
        if config.hub_repo_id and not token:
            raise PublishRejected(f"a Hugging Face token with write access to {config.hub_repo_id} is needed to upload")
        if config.publish_mode == "pr" and not config.hub_repo_id:
            raise PublishRejected("publish_mode 'pr' opens a pull request on the Hub: set hub_repo_id")
        if config.export_s3_uri and not config.export_s3_uri.startswith("s3://"):
            raise PublishRejected(f"export_s3_uri must be an s3://bucket/prefix URI, not {config.export_s3_uri!r}")


    def work(self, writer: StageWriter) -> PublishMetrics:
        # Data files are written to a local folder as they are made and read from it one at a time
        # (upload, store, export, metrics): the dataset is never held in memory (files.py).
        with tempfile.TemporaryDirectory(prefix="bonito-publish-") as scratch:
            return self._publish(writer, Path(scratch))

    def _publish(self, writer: StageWriter, scratch: Path) -> PublishMetrics:
        store, run, config, examples, approval = self.store, self.run, self.config, self.examples, self.approval
        retry, rows_per_shard, token = self.retry, self.rows_per_shard, self.token
        n_rows = examples.rows_of("examples")
        if n_rows == 0:
            raise PublishRejected("the validated examples table is empty: nothing to publish")
        sources = store.read_table(self.documents, "documents", columns=SOURCE_COLUMNS)
        quality = examples.metrics.quality if isinstance(examples.metrics, ValidateMetrics) else None
        assets = quality_plots(store, quality)
        if self.compare and self.compare.plots:  # tonight vs the last release, beside the quality plots
            assets += quality_plots(store, QualitySummary(plots=self.compare.plots))
        export = open_store(config.export_s3_uri, **self.s3_client_kwargs) if config.export_s3_uri else None
        built: list[Built] = []
        chunked = self.chunks  # this run's chunk stage: filters, passages
        chunking = chunked.metrics if chunked and isinstance(chunked.metrics, ChunkMetrics) else None
        # Append: against the dataset's index (the Hub's, else the export's), a validate part at a
        # time, writing only the night's files (history.py); an export's new snapshot carries the
        # rest over (export.py). A snapshot publish streams its shards.
        indexed = config.publish_mode == "append"
        overwrite = None if indexed else self._snapshot(scratch / "snapshot", sources)
        tag = safe_segment(run.run_id)
        release_tag = tag_name(run.run_id)

        def build(existing: ExistingFiles) -> dict[str, Content]:
            """The dataset's files: this run's snapshot; (append) the files this run adds to it."""
            appended = None
            if overwrite is not None:  # a snapshot publish streamed its shards above
                snapshot = overwrite
            else:
                facts = RowFacts()
                appended = append_indexed(existing, self._night, n_rows, tag, rows_per_shard,
                                          Path(tempfile.mkdtemp(prefix="attempt-", dir=scratch)),
                                          config.example_near_dup_threshold, self._passages, facts.add)
                snapshot = Built(appended.splits, facts, merged_sources(existing, sources), appended.added,
                                 appended.skipped, appended.near_duplicates)
            # No local filesystem path is published: local sources relative to the source root.
            snapshot = replace(snapshot, sources=public_sources(snapshot.sources, config.source))
            built.append(snapshot)
            if indexed and snapshot.skipped == n_rows and CARD_FILE in existing.paths:
                return {}  # an append that adds no row changes nothing, the card included
            card = render_card(
                run=run, config=config, splits=snapshot.splits, facts=snapshot.facts,
                documents=snapshot.sources, quality=quality, plots=[(label, path) for label, path, _ in assets],
                export_note=EXPORT_READ_NOTE if export else "", review=review_line(approval),
                chunking=chunking, history=appended,
                changes=changes_section(self.compare, snapshot.added, config.hub_repo_id,
                                        release_tag if config.hub_repo_id and config.publish_mode != "pr" else None),
            )
            files = appended.files if appended else {}
            files |= {path: data for split in snapshot.splits for path, data in split.shards.items()}
            files |= {path: data for _, path, data in assets}
            files[SOURCES_FILE] = sources_jsonl(snapshot.sources)
            files[CARD_FILE] = card.encode()
            return files | scorecard_files(self.compare)  # .bonito/: the next release's baseline

        commit = None
        if config.hub_repo_id:
            run_line = f"Run: {run.run_url}" if run.run_url else f"Run: {run.dag_id} / {run.run_id}"
            commit, files = upload_dataset(
                build,
                repo_id=config.hub_repo_id,
                token=token,
                private=config.hub_private,
                replace_folders=() if indexed else REPLACED,
                commit_message=f"Publish {n_rows} Bonito examples ({run.run_id}, {config.publish_mode})",
                commit_description=f"{run_line}\nMode: {config.publish_mode}",
                create_pr=config.publish_mode == "pr",
                endpoint=self.endpoint or os.environ.get("HF_ENDPOINT") or None,
                retry=retry,
            )
        else:
            files = build(ExportFiles(export) if export else NoFiles())
        carry = ExportFiles(export) if export and indexed else None  # the export's files an append keeps
        snapshot = built[-1]

        dataset_key = f"{writer.prefix}/{DATASET_DIR}"
        for path, data in sorted(files.items()):  # a file is copied from its path, never held
            if isinstance(data, Path):
                store.write_file(f"{dataset_key}/{path}", data)
            else:
                store.write_bytes(f"{dataset_key}/{path}", data)
        logger.info("wrote %d files (%d examples) to %s", len(files), sum(split.rows for split in snapshot.splits),
                    store.uri(dataset_key))
        # Rows this publish added: none when the Hub already held the files (a re-publish of this
        # run, or main already holding the PR's files); a commit whose answer was lost counts as made.
        added = 0 if commit and not commit.created else n_rows - snapshot.skipped
        metrics = PublishMetrics(
            dataset_uri=store.uri(dataset_key),
            publish_mode=config.publish_mode,
            examples=sum(split.rows for split in snapshot.splits),
            examples_added=added,
            duplicates_skipped=snapshot.skipped - snapshot.near_duplicates,
            near_duplicates_skipped=snapshot.near_duplicates,
            documents=snapshot.sources.num_rows,
            examples_per_task_type={split.task_type: split.rows for split in snapshot.splits},
            files={path: PublishedFile(bytes=content.size(data), sha256=content.sha256(data))
                   for path, data in sorted(files.items())},
        )
        metrics.approval = approval
        if commit:
            metrics.hub_url, metrics.hub_commit_sha, metrics.hub_new_commit = (
                commit.repo_url, commit.commit_sha, commit.created)
            metrics.hub_pr_url = commit.pr_url
            if config.publish_mode != "pr":  # a release: its commit tagged (a retry finds the tag there)
                assert config.hub_repo_id is not None  # the commit went there
                metrics.hub_tag = tag_release(config.hub_repo_id, commit.commit_sha, release_tag, token,
                                              self.endpoint or os.environ.get("HF_ENDPOINT") or None)
        if export:
            metrics.export_snapshot_uri = export_files(export, files, run.run_id, carry)
            metrics.export_uri = export.root_uri
        return metrics

    def _snapshot(self, folder: Path, sources: pa.Table) -> Built:
        """This run's rows as the whole dataset (overwrite, pr): read one validate part at a time,
        written to `folder` one shard at a time; the card's facts gathered on the way."""
        store, examples, facts = self.store, self.examples, RowFacts()

        def parts() -> Iterator[pa.Table]:
            for i in range(len(examples.shards_of("examples"))):
                part = store.read_shard(examples, "examples", i)
                facts.add(part)
                yield part

        splits = write_splits(parts(), folder, self.rows_per_shard, examples.rows_of("examples"))
        return Built(splits, facts, sources, {split.task_type: split.rows for split in splits})

    def _night(self) -> Iterator[pa.Table]:
        """The validated rows, one validate part at a time."""
        for i in range(len(self.examples.shards_of("examples"))):
            yield self.store.read_shard(self.examples, "examples", i)

    def _passages(self, rows: pa.Table) -> dict[str, str]:
        """chunk_id -> text of the chunks `rows` name, for the near-duplicate check (none without it)."""
        if self.config.example_near_dup_threshold is None or self.chunks is None:
            return {}
        wanted = set(pc.unique(rows["chunk_id"]).drop_null().to_pylist())
        texts = chunk_texts(self.store, self.chunks, wanted)
        return dict(zip(texts["chunk_id"].to_pylist(), texts["text"].to_pylist()))


@dataclass(frozen=True)
class Built:
    """What one build of the dataset's files holds: its splits, the card's facts of its rows, its
    sources, the rows it adds per task type, and this run's rows it left out (duplicates, exact or near)."""

    splits: list[TaskSplit]
    facts: RowFacts
    sources: pa.Table
    added: dict[str, int]
    skipped: int = 0
    near_duplicates: int = 0


def publish(store: ArtifactStore, run: RunRef, config: RunConfig, examples: Manifest, documents: Manifest,
            token: str | None, **options: Any) -> Manifest:
    """Publish the validated examples (see `Publish`); options: endpoint, retry, rows_per_shard,
    s3_client_kwargs, approval."""
    return Publish(store, run, config, examples, documents, token, **options).execute()


def review_line(approval: Approval | None) -> str:
    """The card's line on the approval: who approved, when, with their note."""
    if approval is None or approval.decision != "approved":
        return ""
    line = f"\n- Reviewed before publishing: approved by {approval.reviewer or 'a reviewer'}"
    line += f" on {approval.decided_at[:10]}" if approval.decided_at else ""
    return line + (f" (note: {' '.join(approval.note.split())})" if approval.note else "")


class NoFiles:
    """No existing dataset (append without a Hub repo or export prefix starts from nothing)."""

    paths: list[str] = []

    def read(self, path: str) -> bytes:
        raise KeyError(path)


def quality_plots(store: ArtifactStore, quality: QualitySummary | None) -> list[tuple[str, str, bytes]]:
    """(label, path in the dataset, bytes) of each plot validate's quality report lists. Images
    that are not in the store are left out with a warning."""
    plots, names = [], set()
    for plot, ref in (quality.plots if quality else {}).items():
        if not plot.lower().endswith(IMAGE_SUFFIXES):
            continue
        try:
            key = store.key(ref) if "://" in ref or ref.startswith("/") else ref
            data = store.read_bytes(key) if store.exists(key) else None
        except (StoreError, OSError) as err:
            logger.warning("quality plot %s: %s; left out of the dataset", ref, err)
            continue
        if data is None:
            logger.warning("quality plot %s is not in the store; left out of the dataset", ref)
            continue
        name = PurePosixPath(key).name
        if name in names:
            name = f"{sha256_hex(key)[:8]}-{name}"
        names.add(name)
        plots.append((PurePosixPath(plot).stem.replace("_", " "), f"{ASSETS_DIR}/{name}", data))
    return plots
