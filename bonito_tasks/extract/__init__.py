"""Extract stage: source files -> documents (one row per distinct content) and rejects.

Runs as a plan (the listing split into partitions balanced by bytes, plan.py), one task per
partition (`extract_partition`), and `collect_documents`, which makes them one stage.

A file's doc_id is the sha256 of its bytes; a tabular row's is the sha256 of its text, so
identical files or rows are one document. Documents already in the ledger are skipped unless
`full_refresh` is set; a run whose documents are all known commits with 0 documents.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pyarrow as pa

from bonito_tasks.checks import check_documents
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    DOCUMENTS,
    DUPLICATE_DOCUMENTS,
    REJECTS,
    ExtractMetrics,
    Manifest,
    PlanMetrics,
    RejectSample,
    RunRef,
    StageName,
    sha256_hex,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.extract.plan import partition_files, plan
from bonito_tasks.extract.readers import READERS, TABLE_READERS, Reject, read_hf_dataset
from bonito_tasks.extract.sources import HF_DATASET, SourceFile, source_file
from bonito_tasks.ledger import NOTHING_KNOWN, Known, load_ledger, reject_key
from bonito_tasks.stage import CombineStage, Stage, StageWriter
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

SHARD_TEXT_BYTES = 32 * 2**20  # flush a documents shard once it holds this much text
REJECT_SAMPLES = 100  # rejects listed in the manifest (all are in the rejects table)
SUPPORTED = sorted([*READERS, *TABLE_READERS, HF_DATASET])


class NothingExtracted(PermanentFailure):
    """No file under the source gave a document."""


def read_documents(file: SourceFile, config: RunConfig, known: Known = NOTHING_KNOWN) -> tuple[list[dict], int]:
    """The documents rows of one source file and how many were skipped as already known;
    raises Reject with the reason the file cannot be used (`content_sha256` set when the reject
    came after reading the bytes: the ledger remembers it by content)."""
    if file.reject:
        raise Reject(*file.reject)
    if file.suffix not in READERS and file.suffix not in TABLE_READERS and file.suffix != HF_DATASET:
        raise Reject("unsupported_format", f"no reader for {file.suffix or 'files without an extension'}; "
                     f"supported: {' '.join(SUPPORTED)}")
    if file.size > config.max_file_bytes:
        raise Reject("too_large", f"{file.size} bytes exceeds max_file_bytes={config.max_file_bytes}")
    if file.suffix == HF_DATASET:
        assert file.local_path is not None  # a dataset folder is always local (sources._hf_dataset)
        return _rows(file, "application/vnd.hf-dataset", read_hf_dataset(file.local_path, config.text_column), known)
    try:
        data = file.read(config.max_file_bytes)
    except OSError as err:
        raise Reject("unreadable", f"{type(err).__name__}: {err}") from err
    if len(data) > config.max_file_bytes:  # grew since it was listed
        raise Reject("too_large", f"more than max_file_bytes={config.max_file_bytes} bytes")
    doc_id = sha256_hex(data)  # the content hash: a document's doc_id, a rejected file's ledger key
    try:
        if (reason := known.rejected(doc_id)) is not None:  # an unchanged reject: skip before parsing
            raise Reject(reason, "rejected by an earlier run and unchanged since")
        if not data.strip():
            raise Reject("empty_file", "file is empty" if not data else "file holds only whitespace")
        if file.suffix in TABLE_READERS:
            media_type, table_reader = TABLE_READERS[file.suffix]
            return _rows(file, media_type, table_reader(data, config.text_column), known)
        if doc_id in known:  # every task type done: skip before parsing (one read and one hash per file)
            return [], 1
        media_type, reader = READERS[file.suffix]
        extracted = reader(data)
        if not extracted.text.strip():
            raise Reject("no_text", "no text could be extracted")
    except Reject as rej:
        rej.content_sha256 = doc_id  # the ledger remembers the reject by content
        raise
    return [{"doc_id": doc_id, "source_uri": file.uri, "media_type": media_type, "size_bytes": len(data),
             "text": extracted.text, "page_starts": extracted.page_starts,
             "furniture_lines": extracted.furniture_lines, "pending_task_types": known.pending(doc_id)}], 0


def _rows(file: SourceFile, media_type: str, texts, known: Known) -> tuple[list[dict], int]:
    rows, skipped = [], 0
    for index, text in enumerate(texts):  # read the whole file first: a bad row rejects all of it
        doc_id = sha256_hex(text)
        if doc_id in known:
            skipped += 1
            continue
        rows.append({"doc_id": doc_id, "source_uri": f"{file.uri}#row={index}", "media_type": media_type,
                     "size_bytes": len(text.encode()), "text": text, "page_starts": None,
                     "pending_task_types": known.pending(doc_id)})
    if not rows and not skipped:
        raise Reject("no_text", "no row has text in the text column")
    return rows, skipped


# What the ledger keys a document by (ledger.processing_target) and how it reads it.
LEDGER_FIELDS = frozenset({"task_types", "full_refresh", "retry_rejects", "model_id", "model_revision", "hub_repo_id",
                           "export_s3_uri", "max_file_bytes", "text_column"})


class ExtractPartition(Stage):
    """The files of one partition of the plan into documents and rejects (`extract/shard-NNNNN/`).
    A partition whose files are all rejected commits with 0 documents: only the whole run fails."""

    name = StageName.EXTRACT
    reads = (StageName.PLAN,)
    config_fields = LEDGER_FIELDS | {"source"}

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, plan_manifest: Manifest, partition: int,
                 s3_client_kwargs: dict[str, Any] | None = None):
        super().__init__(store, run, config, [plan_manifest], partition=partition)
        self.plan_manifest, self.s3_client_kwargs = plan_manifest, s3_client_kwargs

    def work(self, writer: StageWriter) -> ExtractMetrics:
        config, partition = self.config, self.partition
        assert partition is not None
        # Empty with full_refresh; no rejects with retry_rejects.
        known = load_ledger(self.store, self.run.dag_id, config)
        client = _s3_client(config, self.s3_client_kwargs)
        metrics = ExtractMetrics()
        documents = writer.buffer("documents", DOCUMENTS, max_bytes=SHARD_TEXT_BYTES)
        rejects: list[dict] = []
        seen: set[str] = set()
        for row in partition_files(self.store, self.plan_manifest, partition):
            file = source_file(row, client)
            metrics.files += 1
            try:
                rows, skipped = read_documents(file, config, known)
            except Reject as rej:
                ledger_key = reject_key(file, rej)
                if known.rejected(ledger_key):  # remembered and unchanged: counted, not reported again
                    metrics.skipped_rejects += 1
                    continue
                log.warning("rejected %s: %s (%s)", file.uri, rej.reason, rej.detail)
                rejects.append({"source_uri": file.uri, "stage": "extract", "reason": rej.reason,
                                "detail": rej.detail, "size_bytes": file.size, "ledger_key": ledger_key})
                continue
            metrics.skipped_known += skipped
            metrics.source_bytes += file.size
            for row in rows:
                if row["doc_id"] in seen:
                    metrics.duplicate_files += 1
                    continue
                seen.add(row["doc_id"])
                metrics.pages += len(row["page_starts"] or ())
                metrics.furniture_lines += row.get("furniture_lines", 0)
                documents.append(row, len(row["text"]))
        documents.flush()
        if rejects:
            writer.add("rejects", pa.Table.from_pylist(rejects, REJECTS))
        metrics.documents, metrics.rejects = len(seen), len(rejects)
        metrics.rejects_by_reason = dict(sorted(Counter(r["reason"] for r in rejects).items()))
        metrics.reject_samples = [RejectSample(**{k: r[k] for k in ("source_uri", "reason", "detail")})
                                  for r in rejects[:REJECT_SAMPLES]]
        log.info("extract partition %d: %d file(s), %d new document(s), %d already in the ledger, %d duplicate(s), "
                 "%d reject(s) %s", partition, metrics.files, metrics.documents, metrics.skipped_known,
                 metrics.duplicate_files, metrics.rejects, metrics.rejects_by_reason)
        for r in rejects:
            log.info("  reject %-20s %s: %s", r["reason"], r["source_uri"], r["detail"])
        return metrics

    def check(self, writer: StageWriter) -> None:
        check_documents(self.store, writer)


class CollectDocuments(CombineStage):
    """The extract stage as one manifest over its partitions (in order). A document whose content
    an earlier partition holds is listed in `duplicate_documents` (chunk skips it), so N partitions
    keep the same documents as one. Raises NothingExtracted when no partition found a document."""

    name = StageName.EXTRACT
    reads = (StageName.EXTRACT,)
    config_fields = frozenset({"source"})

    def combine(self, writer: StageWriter) -> ExtractMetrics:
        partitions = self.inputs
        total = _sum_metrics([m.metrics_as(ExtractMetrics) for m in partitions])
        seen: set[str] = set()  # doc ids: about 100 bytes per document
        duplicates = []
        for partition, manifest in enumerate(partitions):
            for i in range(len(manifest.shards_of("documents"))):
                part = self.store.read_shard(manifest, "documents", i, columns=["doc_id", "source_uri"])
                for doc_id, uri in zip(part["doc_id"].to_pylist(), part["source_uri"].to_pylist()):
                    if doc_id in seen:
                        duplicates.append({"doc_id": doc_id, "partition": partition, "source_uri": uri})
                    seen.add(doc_id)
        if duplicates:
            writer.add("duplicate_documents", pa.Table.from_pylist(duplicates, DUPLICATE_DOCUMENTS))
        total.documents, total.duplicate_files = len(seen), total.duplicate_files + len(duplicates)
        if not seen and not total.skipped_known and not total.skipped_rejects:
            reasons = "; ".join(f"{r.source_uri}: {r.reason} ({r.detail})" for r in total.reject_samples[:20])
            raise NothingExtracted(
                f"no document could be extracted from {self.config.source!r} "
                f"({total.rejects} file(s) rejected{': ' + reasons if reasons else ', none found'})"
            )
        log.info("extract: %d partition(s), %d file(s), %d new document(s), %d already in the ledger, "
                 "%d duplicate(s), %d reject(s) %s", len(partitions), total.files, total.documents,
                 total.skipped_known, total.duplicate_files, total.rejects, total.rejects_by_reason)
        return total


def extract_partition(
    store: ArtifactStore, run: RunRef, config: RunConfig, plan_manifest: Manifest, partition: int,
    s3_client_kwargs: dict[str, Any] | None = None,
) -> Manifest:
    return ExtractPartition(store, run, config, plan_manifest, partition, s3_client_kwargs).execute()


def collect_documents(store: ArtifactStore, run: RunRef, config: RunConfig, partitions: list[Manifest]) -> Manifest:
    return CollectDocuments(store, run, config, partitions).execute()


def extract(
    store: ArtifactStore, run: RunRef, config: RunConfig, s3_client_kwargs: dict[str, Any] | None = None
) -> Manifest:
    """Plan, every partition in turn, and collect: the whole stage in one process."""
    planned = plan(store, run, config, s3_client_kwargs)
    partitions = [extract_partition(store, run, config, planned, p, s3_client_kwargs)
                  for p in range(planned.metrics_as(PlanMetrics).partitions)]
    return collect_documents(store, run, config, partitions)


def _sum_metrics(parts: list[ExtractMetrics]) -> ExtractMetrics:
    total = ExtractMetrics(partitions=len(parts))
    for part in parts:
        for name in ("files", "skipped_known", "skipped_rejects", "duplicate_files", "rejects", "pages",
                     "furniture_lines", "source_bytes"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.wall_s = max(total.wall_s, part.wall_s)
        for reason, count in part.rejects_by_reason.items():
            total.rejects_by_reason[reason] = total.rejects_by_reason.get(reason, 0) + count
        total.reject_samples += part.reject_samples[:REJECT_SAMPLES - len(total.reject_samples)]
    total.rejects_by_reason = dict(sorted(total.rejects_by_reason.items()))
    return total


def _s3_client(config: RunConfig, s3_client_kwargs: dict[str, Any] | None) -> Any:
    if not config.source.startswith("s3://"):
        return None
    import boto3

    return boto3.client("s3", **(s3_client_kwargs or {}))
