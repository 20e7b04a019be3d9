"""The data contracts between stages: Arrow schemas of every table and the stage manifest.

Every stage writes Parquet shards that follow one of these schemas, then a manifest
(`_manifest.json`, written last) that is the commit marker of the stage.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),  # sha256 of the source bytes (tabular: of the row's text)
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("page_starts", pa.list_(pa.int64())),  # char offset of each page (PDF), else null
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # stable label, e.g. "corrupt_pdf"
        pa.field("detail", pa.string(), nullable=False),  # human-readable cause
        pa.field("size_bytes", pa.int64()),
    ]
)

CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),  # sha256 of doc_id and span
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),  # position within the document
        pa.field("char_start", pa.int64(), nullable=False),  # span [start, end) in the document text
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("page", pa.int32()),  # 1-based PDF page where the chunk starts, else null
        # Other places with exactly the same text (exact duplicates are kept once).
        pa.field("also_in", pa.list_(pa.struct([("doc_id", pa.string()), ("char_start", pa.int64()),
                                                 ("char_end", pa.int64())])), nullable=False),
    ]
)

EXAMPLES = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),  # sha256 of lineage key
        pa.field("task_type", pa.string(), nullable=False),  # short name, see task_types.py
        pa.field("input", pa.large_string(), nullable=False),
        pa.field("output", pa.large_string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),  # which of the n generations
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_revision", pa.string(), nullable=False),  # hub revision or content hash
        pa.field("sampling_params", pa.string(), nullable=False),  # canonical JSON
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# A generation that did not become an example, and why (no_pipe, extra_pipe, duplicate,
# prompt_too_long): with `examples` it accounts for every (chunk_id, task_type, sample_index).
DROPPED_GENERATIONS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("generated_text", pa.large_string(), nullable=False),
    ]
)

QUARANTINE = EXAMPLES.append(pa.field("failed_expectations", pa.list_(pa.string()), nullable=False))

TABLES: dict[str, pa.Schema] = {
    "documents": DOCUMENTS,
    "rejects": REJECTS,
    "chunks": CHUNKS,
    "examples": EXAMPLES,
    "dropped_generations": DROPPED_GENERATIONS,
    "quarantine": QUARANTINE,
}


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class RunRef(BaseModel):
    """Which pipeline run a stage belongs to (the Airflow DAG and run ids, and a link for people)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: str
    run_id: str
    run_url: str | None = None


class ShardRef(BaseModel):
    """One Parquet file of a table, relative to the stage directory."""

    model_config = ConfigDict(extra="forbid")

    table: str
    path: str
    rows: int
    sha256: str


class Manifest(BaseModel):
    """The commit marker of one stage (or one shard of a mapped stage)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    stage: str
    dag_id: str
    run_id: str
    uri: str  # where this manifest lives
    shards: list[ShardRef] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    input_manifest_sha256: list[str] = Field(default_factory=list)
    config_sha256: str
    code_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def shards_of(self, table: str) -> list[ShardRef]:
        return [s for s in self.shards if s.table == table]

    def rows_of(self, table: str) -> int:
        return sum(s.rows for s in self.shards_of(table))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def sha256(self) -> str:
        """Content hash of what the stage committed, independent of when it was written."""
        return sha256_hex(canonical_json(self.model_dump(exclude={"created_at", "metrics"})))
