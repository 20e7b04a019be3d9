"""The dataset in Hugging Face Hub layout: Parquet shards per task type and a sources sidecar.

    data/<task_type>/train-00000-of-0000N.parquet   the examples of one task type (one config)
    sources.jsonl                                     one line per source document, without its text
    README.md                                         the dataset card (card.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks.contracts import EXAMPLES

SPLIT = "train"
DATA_DIR = "data"
SOURCES_FILE = "sources.jsonl"
CARD_FILE = "README.md"
SOURCE_COLUMNS = ["doc_id", "source_uri", "media_type", "size_bytes"]
DEFAULT_ROWS_PER_SHARD = 100_000


@dataclass(frozen=True)
class TaskSplit:
    """The examples of one task type as Parquet shards."""

    task_type: str
    rows: int
    shards: dict[str, bytes]  # path in the dataset -> Parquet bytes

    @property
    def folder(self) -> str:
        return f"{DATA_DIR}/{self.task_type}"

    @property
    def download_size(self) -> int:
        return sum(len(data) for data in self.shards.values())


def task_splits(examples: pa.Table, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> list[TaskSplit]:
    """One TaskSplit per task type present, sorted by name, rows sorted by example_id: the same
    examples always give the same bytes."""
    examples = examples.select(EXAMPLES.names).cast(EXAMPLES)
    splits = []
    for task_type in sorted(set(examples.column("task_type").to_pylist())):
        rows = examples.filter(pc.equal(examples["task_type"], task_type)).sort_by("example_id")
        n_shards = -(-rows.num_rows // rows_per_shard)
        shards = {
            f"{DATA_DIR}/{task_type}/{SPLIT}-{i:05d}-of-{n_shards:05d}.parquet": _parquet_bytes(
                rows.slice(i * rows_per_shard, rows_per_shard)
            )
            for i in range(n_shards)
        }
        splits.append(TaskSplit(task_type, rows.num_rows, shards))
    return splits


def sources_jsonl(documents: pa.Table) -> bytes:
    """Provenance of every source document (content hash, where it came from), never its text."""
    rows = documents.select(SOURCE_COLUMNS).sort_by([("doc_id", "ascending"), ("source_uri", "ascending")])
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows.to_pylist()).encode()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
