"""Extract stage: source files -> documents (one row per distinct file content) and rejects."""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import DOCUMENTS, REJECTS, Manifest, RunRef, sha256_hex
from bonito_tasks.extract.readers import READERS, Reject
from bonito_tasks.extract.sources import SourceFile, iter_source
from bonito_tasks.store import ArtifactStore, StageWriter

log = logging.getLogger(__name__)

SHARD_TEXT_BYTES = 64 * 2**20  # flush a documents shard once it holds this much text


class NothingExtracted(RuntimeError):
    pass


def read_document(file: SourceFile, max_bytes: int) -> dict:
    """One source file as a documents row; raises Reject with the reason it cannot be one."""
    suffix = PurePosixPath(file.uri).suffix.lower()
    if suffix not in READERS:
        raise Reject("unsupported_format", f"no reader for {suffix or 'files without an extension'}; "
                     f"supported: {' '.join(sorted(READERS))}")
    if file.size > max_bytes:
        raise Reject("too_large", f"{file.size} bytes exceeds max_file_bytes={max_bytes}")
    try:
        data = file.read()
    except OSError as err:
        raise Reject("unreadable", f"{type(err).__name__}: {err}") from err
    if not data.strip():
        raise Reject("empty_file", "file is empty")
    media_type, reader = READERS[suffix]
    extracted = reader(data)
    if not extracted.text.strip():
        raise Reject("no_text", "no text could be extracted")
    return {
        "doc_id": sha256_hex(data),
        "source_uri": file.uri,
        "media_type": media_type,
        "size_bytes": len(data),
        "text": extracted.text,
        "page_starts": extracted.page_starts,
    }


def extract(
    store: ArtifactStore, run: RunRef, config: RunConfig, s3_client_kwargs: dict[str, Any] | None = None
) -> Manifest:
    writer = StageWriter(store, run, "extract")
    if done := writer.reusable(config.sha256()):
        log.info("extract already committed at %s; reusing it", done.uri)
        return done
    writer.begin()
    started = time.monotonic()
    batch: list[dict] = []
    batch_bytes = 0
    rejects: list[dict] = []
    seen: set[str] = set()
    duplicates = 0
    for file in iter_source(config.source, **(s3_client_kwargs or {})):
        try:
            row = read_document(file, config.max_file_bytes)
        except Reject as rej:
            log.warning("rejected %s: %s (%s)", file.uri, rej.reason, rej.detail)
            rejects.append({"source_uri": file.uri, "stage": "extract", "reason": rej.reason,
                            "detail": rej.detail, "size_bytes": file.size})
            continue
        if row["doc_id"] in seen:
            duplicates += 1
            continue
        seen.add(row["doc_id"])
        batch.append(row)
        batch_bytes += len(row["text"])
        if batch_bytes >= SHARD_TEXT_BYTES:
            writer.add("documents", pa.Table.from_pylist(batch, DOCUMENTS))
            batch, batch_bytes = [], 0
    if batch:
        writer.add("documents", pa.Table.from_pylist(batch, DOCUMENTS))
    if rejects:
        writer.add("rejects", pa.Table.from_pylist(rejects, REJECTS))
    if not seen:
        reasons = "; ".join(f"{r['source_uri']}: {r['reason']} ({r['detail']})" for r in rejects[:20])
        raise NothingExtracted(
            f"no document could be extracted from {config.source!r} "
            f"({len(rejects)} file(s) rejected{': ' + reasons if reasons else ', none found'})"
        )
    return writer.commit(
        config_sha256=config.sha256(),
        counts={"documents": len(seen), "rejects": len(rejects), "duplicate_files": duplicates},
        metrics={"wall_s": round(time.monotonic() - started, 3),
                 "rejects": [{k: r[k] for k in ("source_uri", "reason")} for r in rejects[:100]]},
    )
