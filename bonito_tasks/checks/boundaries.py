"""Contracts at stage boundaries: checks over the documents and chunks a stage is about to commit.

Extract and chunk call these after writing their Parquet parts and before writing their manifest,
so a stage that breaks the contract fails instead of committing. Each contract is an Arrow compute
over one part at a time (memory: one part, plus 8 bytes per id for uniqueness): extract and chunk
tasks, dozens a night, do not pay Great Expectations' import (about 7 s each). A failure is reported
like a GX expectation's (name, column, unexpected count and percent, samples), as ValidationFailed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.checks.gx import MESSAGE_SAMPLES, ValidationFailed, describe
from bonito_tasks.contracts import CHUNKS, DOCUMENTS, FORBIDDEN_CHARS_PATTERN, CheckFindings, Manifest
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import ArtifactStore

DOCUMENTS_SUITE = "bonito_documents"
CHUNKS_SUITE = "bonito_chunks"
SHA256_REGEX = r"^[0-9a-f]{64}$"


@dataclass
class Contract:
    """One rule over the rows: `broken(part)` is a boolean array, True where a row breaks it."""

    name: str
    column: str
    expected: str
    broken: Callable[[pa.Table], pa.Array]
    rows: int = 0
    unexpected: int = 0
    samples: list[str] = field(default_factory=list)

    def check(self, part: pa.Table) -> None:
        mask = pc.fill_null(self.broken(part), True)
        self.rows += part.num_rows
        hits = pc.sum(mask).as_py() or 0
        self.unexpected += hits
        if hits and len(self.samples) < MESSAGE_SAMPLES:
            values = part[self.column].filter(mask).slice(0, MESSAGE_SAMPLES - len(self.samples)).to_pylist()
            self.samples += [repr(v)[:80] for v in values]

    def outcome(self) -> dict:
        return {"name": self.name, "level": "contract", "expectation": "contract", "column": self.column,
                "success": self.unexpected == 0, "expected": self.expected, "bound": {},
                "unexpected_count": self.unexpected,
                "unexpected_percent": 100 * self.unexpected / self.rows if self.rows else 0.0,
                "sample_unexpected": self.samples}


class Unique:
    """Whether a column's values repeat across every part (8-byte hashes of the values kept)."""

    def __init__(self, name: str, column: str, expected: str):
        self.contract = Contract(name, column, expected, lambda part: pa.array([False] * part.num_rows))
        self.hashes: list[np.ndarray] = []

    def check(self, part: pa.Table) -> None:
        values = part[self.contract.column].combine_chunks()
        self.hashes.append(_hash64(values))
        self.contract.rows += part.num_rows

    def outcome(self) -> dict:
        keys = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint64)
        _, counts = np.unique(keys, return_counts=True)
        self.contract.unexpected = int((counts - 1).sum())
        return self.contract.outcome()


def _hash64(values: pa.Array) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                     for v in values.to_pylist()], dtype=np.uint64)


def _not_null(schema: pa.Schema) -> list[Contract]:
    return [Contract(f"not_null:{f.name}", f.name, f"{f.name} not null", _is_null(f.name))
            for f in schema if not f.nullable]


def _is_null(column: str) -> Callable[[pa.Table], pa.Array]:
    return lambda part: pc.is_null(part[column])


def _text(part: pa.Table) -> pa.Array:
    return pc.fill_null(part["text"].combine_chunks(), "")


def _text_contracts() -> list[Contract]:
    return [
        Contract("text_not_empty", "text", "text has a non-blank character",
                 lambda part: pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(_text(part))), 0)),
        Contract("text_clean", "text", "text holds no U+FFFE, U+FFFD or C0 control character but newline and tab",
                 lambda part: pc.match_substring_regex(_text(part), FORBIDDEN_CHARS_PATTERN)),
    ]


def _run(suite: str, what: str, uri: str, parts: Iterator[pa.Table], contracts: list[Contract | Unique]) -> None:
    """Check every part against every contract; raise ValidationFailed listing what failed.
    (The schema itself is enforced by the store: parts are cast to the contract when read.)"""
    for part in parts:
        for contract in contracts:
            contract.check(part)
    failed = [o for o in (c.outcome() for c in contracts) if not o["success"]]
    if failed:
        lines = [f"{what} at {uri} break the {suite} contract; the stage was not committed:"]
        raise ValidationFailed("\n".join(lines + [describe(f) for f in failed]),
                               CheckFindings(suite=suite, failed=failed))


def _parts(store: ArtifactStore, writer: StageWriter, table: str) -> Iterator[pa.Table]:
    for ref in writer.shards:
        if ref.table == table:
            yield store.read_part(writer.prefix, ref)


def check_documents(store: ArtifactStore, writer: StageWriter) -> None:
    """The documents the extract stage wrote: schema, non-empty text, unique sha256 ids, page offsets in bounds."""

    def pages_out_of_bounds(part: pa.Table) -> pa.Array:
        lengths = pc.utf8_length(_text(part)).to_pylist()
        return pa.array([s is not None and not (s == sorted(s) and all(0 <= p <= n for p in s))
                         for s, n in zip(part["page_starts"].to_pylist(), lengths)], pa.bool_())

    contracts: list[Contract | Unique] = [
        *_not_null(DOCUMENTS),
        Contract("doc_id_sha256", "doc_id", "doc_id is a sha256 hex digest",
                 lambda part: pc.invert(pc.match_substring_regex(pc.fill_null(part["doc_id"], ""), SHA256_REGEX))),
        Unique("unique_doc_id", "doc_id", "one row per doc_id"),
        *_text_contracts(),
        Contract("page_starts_in_bounds", "page_starts", "page starts ascend and lie within the text",
                 pages_out_of_bounds),
    ]
    _run(DOCUMENTS_SUITE, "documents", store.uri(writer.prefix), _parts(store, writer, "documents"), contracts)


def check_chunks(store: ArtifactStore, writer: StageWriter, documents: Manifest) -> None:
    """The chunks the chunk stage wrote: schema, non-empty text, spans inside their document and
    matching the text's length, unique ids."""
    doc_ids, doc_lengths = [], []
    for i in range(len(documents.shards_of("documents"))):  # one documents shard in memory at a time
        docs = store.read_shard(documents, "documents", i, columns=["doc_id", "text"])
        doc_ids.append(docs["doc_id"].combine_chunks())
        doc_lengths.append(pc.utf8_length(docs["text"].combine_chunks()))
    ids = pa.concat_arrays(doc_ids) if doc_ids else pa.array([], pa.string())
    lengths = pa.concat_arrays(doc_lengths) if doc_lengths else pa.array([], pa.int64())

    def doc_chars(part: pa.Table) -> pa.Array:
        return lengths.take(pc.index_in(part["doc_id"], value_set=ids))

    contracts: list[Contract | Unique] = [
        *_not_null(CHUNKS),
        Unique("unique_chunk_id", "chunk_id", "one row per chunk_id"),
        Contract("known_document", "doc_id", "doc_id is a document of the extract stage",
                 lambda part: pc.is_null(doc_chars(part))),
        Contract("start_in_bounds", "char_start", "char_start >= 0", lambda part: pc.less(part["char_start"], 0)),
        Contract("end_in_bounds", "char_end", "char_end <= length of the document text",
                 lambda part: pc.greater(part["char_end"], pc.fill_null(doc_chars(part), 2**62))),
        Contract("span_matches_text", "text", "char_end - char_start == length of the chunk text",
                 lambda part: pc.not_equal(pc.subtract(part["char_end"], part["char_start"]),
                                           pc.utf8_length(_text(part)))),
        *_text_contracts(),
        Contract("has_tokens", "n_tokens", "n_tokens >= 1", lambda part: pc.less(part["n_tokens"], 1)),
    ]
    _run(CHUNKS_SUITE, "chunks", store.uri(writer.prefix), _parts(store, writer, "chunks"), contracts)
