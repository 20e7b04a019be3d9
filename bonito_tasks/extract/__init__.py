"""Extract stage: source files -> documents (one row per distinct content) and rejects.

A file's doc_id is the sha256 of its bytes; a tabular row's is the sha256 of its text, so
identical files or rows are one document. Documents already in the ledger are skipped unless
`full_refresh` is set; a run whose documents are all known commits with 0 documents.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from bonito_tasks.checks import check_documents
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import DOCUMENTS, REJECTS, ExtractMetrics, Manifest, RejectSample, RunRef, sha256_hex
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.extract.readers import READERS, TABLE_READERS, Reject, read_hf_dataset
from bonito_tasks.extract.sources import HF_DATASET, SourceFile, iter_source
from bonito_tasks.ledger import load_ledger
from bonito_tasks.stage import StageWriter, run_stage
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

SHARD_TEXT_BYTES = 32 * 2**20  # flush a documents shard once it holds this much text
REJECT_SAMPLES = 100  # rejects listed in the manifest (all are in the rejects table)
SUPPORTED = sorted([*READERS, *TABLE_READERS, HF_DATASET])


class NothingExtracted(PermanentFailure):
    """No file under the source gave a document."""


def read_documents(file: SourceFile, config: RunConfig, known: set[str] = frozenset()) -> tuple[list[dict], int]:
    """The documents rows of one source file and how many were skipped as already known;
    raises Reject with the reason the file cannot be used."""
    if file.reject:
        raise Reject(*file.reject)
    if file.suffix not in READERS and file.suffix not in TABLE_READERS and file.suffix != HF_DATASET:
        raise Reject("unsupported_format", f"no reader for {file.suffix or 'files without an extension'}; "
                     f"supported: {' '.join(SUPPORTED)}")
    if file.size > config.max_file_bytes:
        raise Reject("too_large", f"{file.size} bytes exceeds max_file_bytes={config.max_file_bytes}")
    if file.suffix == HF_DATASET:
        return _rows(file, "application/vnd.hf-dataset", read_hf_dataset(file.local_path, config.text_column), known)
    try:
        data = file.read(config.max_file_bytes)
    except OSError as err:
        raise Reject("unreadable", f"{type(err).__name__}: {err}") from err
    if len(data) > config.max_file_bytes:  # grew since it was listed
        raise Reject("too_large", f"more than max_file_bytes={config.max_file_bytes} bytes")
    if not data.strip():
        raise Reject("empty_file", "file is empty" if not data else "file holds only whitespace")
    if file.suffix in TABLE_READERS:
        media_type, table_reader = TABLE_READERS[file.suffix]
        return _rows(file, media_type, table_reader(data, config.text_column), known)
    doc_id = sha256_hex(data)
    if doc_id in known:  # skip before parsing: an unchanged corpus costs one read and one hash per file
        return [], 1
    media_type, reader = READERS[file.suffix]
    extracted = reader(data)
    if not extracted.text.strip():
        raise Reject("no_text", "no text could be extracted")
    return [{"doc_id": doc_id, "source_uri": file.uri, "media_type": media_type, "size_bytes": len(data),
             "text": extracted.text, "page_starts": extracted.page_starts,
             "furniture_lines": extracted.furniture_lines}], 0


def _rows(file: SourceFile, media_type: str, texts, known: set[str]) -> tuple[list[dict], int]:
    rows, skipped = [], 0
    for index, text in enumerate(texts):  # read the whole file first: a bad row rejects all of it
        doc_id = sha256_hex(text)
        if doc_id in known:
            skipped += 1
            continue
        rows.append({"doc_id": doc_id, "source_uri": f"{file.uri}#row={index}", "media_type": media_type,
                     "size_bytes": len(text.encode()), "text": text, "page_starts": None})
    if not rows and not skipped:
        raise Reject("no_text", "no row has text in the text column")
    return rows, skipped


def extract(
    store: ArtifactStore, run: RunRef, config: RunConfig, s3_client_kwargs: dict[str, Any] | None = None
) -> Manifest:
    """Every source file into the documents and rejects tables; raises NothingExtracted when no
    file gave a document (a retry cannot fix that)."""

    def work(writer: StageWriter) -> ExtractMetrics:
        started = time.monotonic()
        known = set() if config.full_refresh else load_ledger(store, run.dag_id)
        metrics = ExtractMetrics()
        batch: list[dict] = []
        batch_bytes = 0
        rejects: list[dict] = []
        seen: set[str] = set()
        for file in iter_source(config.source, config.include, config.exclude, **(s3_client_kwargs or {})):
            metrics.files += 1
            try:
                rows, skipped = read_documents(file, config, known)
            except Reject as rej:
                log.warning("rejected %s: %s (%s)", file.uri, rej.reason, rej.detail)
                rejects.append({"source_uri": file.uri, "stage": "extract", "reason": rej.reason,
                                "detail": rej.detail, "size_bytes": file.size})
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
                batch.append(row)
                batch_bytes += len(row["text"])
                if batch_bytes >= SHARD_TEXT_BYTES:
                    writer.add("documents", pa.Table.from_pylist(batch, DOCUMENTS))
                    batch, batch_bytes = [], 0
        if batch:
            writer.add("documents", pa.Table.from_pylist(batch, DOCUMENTS))
        if rejects:
            writer.add("rejects", pa.Table.from_pylist(rejects, REJECTS))
        if not seen and not metrics.skipped_known:
            reasons = "; ".join(f"{r['source_uri']}: {r['reason']} ({r['detail']})" for r in rejects[:20])
            raise NothingExtracted(
                f"no document could be extracted from {config.source!r} "
                f"({len(rejects)} file(s) rejected{': ' + reasons if reasons else ', none found'})"
            )
        metrics.documents, metrics.rejects = len(seen), len(rejects)
        metrics.rejects_by_reason = dict(sorted(Counter(r["reason"] for r in rejects).items()))
        metrics.reject_samples = [RejectSample(**{k: r[k] for k in ("source_uri", "reason", "detail")})
                                  for r in rejects[:REJECT_SAMPLES]]
        metrics.wall_s = round(time.monotonic() - started, 3)
        log.info("extract: %d file(s), %d new document(s), %d already in the ledger, %d duplicate(s), "
                 "%d reject(s) %s in %.1f s", metrics.files, metrics.documents, metrics.skipped_known,
                 metrics.duplicate_files, metrics.rejects, metrics.rejects_by_reason, metrics.wall_s)
        for r in rejects:
            log.info("  reject %-20s %s: %s", r["reason"], r["source_uri"], r["detail"])
        return metrics

    return run_stage(store, run, "extract", config_sha256=config.sha256(), inputs=[], work=work,
                     check=lambda writer: check_documents(store, writer))
