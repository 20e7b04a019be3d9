"""The plan of a run: the source listed once and split into partitions balanced by bytes.

Partitions are contiguous ranges of the sorted listing, so "the first file with a content wins"
means the same with one partition or many. Each partition's files are one part of the
`source_files` table (part i = partition i): an extract task reads only its own.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import SOURCE_FILES, Manifest, PlanMetrics, RunRef, StageName
from bonito_tasks.extract.sources import SourceFile, iter_source
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore

LISTING_BATCH = 10_000  # listing rows spooled per write: memory stays bounded for any listing


class Plan(Stage):
    """List the source and split it into at most `max_partitions` partitions of about
    `partition_bytes` each (a file too large to read weighs nothing: it is rejected unread)."""

    name = StageName.PLAN
    config_fields = frozenset({"source", "include", "exclude", "max_file_bytes", "partition_bytes", "max_partitions"})

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig,
                 s3_client_kwargs: dict[str, Any] | None = None):
        super().__init__(store, run, config)
        self.s3_client_kwargs = s3_client_kwargs or {}

    def work(self, writer: StageWriter) -> PlanMetrics:
        config = self.config
        self.store.probe_writable()  # before anything is read: an unwritable store fails at once
        metrics = PlanMetrics()
        with tempfile.TemporaryDirectory(prefix="bonito-plan-") as tmp:
            spool_path = os.path.join(tmp, "listing.parquet")
            spool_schema = SOURCE_FILES.remove(SOURCE_FILES.get_field_index("partition"))
            with pq.ParquetWriter(spool_path, spool_schema) as spool:
                batch: list[dict] = []
                for file in iter_source(config.source, config.include, config.exclude, **self.s3_client_kwargs):
                    metrics.files += 1
                    row = _row(file)
                    metrics.source_bytes += _weight(row, config)
                    batch.append(row)
                    if len(batch) >= LISTING_BATCH:
                        spool.write_table(pa.Table.from_pylist(batch, spool_schema))
                        batch = []
                spool.write_table(pa.Table.from_pylist(batch, spool_schema))
            metrics.partitions = partition_count(metrics.source_bytes, metrics.files, config)
            sizes = [0] * metrics.partitions
            for index, part in enumerate(_assign(spool_path, metrics.source_bytes, metrics.partitions, config)):
                sizes[index] = sum(_weight(r, config) for r in part.to_pylist())
                writer.add("source_files", part)
        metrics.largest_partition_bytes = max(sizes)
        return metrics


def plan(store: ArtifactStore, run: RunRef, config: RunConfig, s3_client_kwargs: dict[str, Any] | None = None
         ) -> Manifest:
    return Plan(store, run, config, s3_client_kwargs).execute()


def partition_count(source_bytes: int, files: int, config: RunConfig) -> int:
    """Enough partitions for `partition_bytes` each, at most `max_partitions`, at most one per file."""
    wanted = math.ceil(source_bytes / config.partition_bytes) if source_bytes else 1
    return max(1, min(wanted, config.max_partitions, files))


def partition_files(store: ArtifactStore, plan_manifest: Manifest, partition: int) -> list[dict]:
    """The listing rows of one partition."""
    return store.read_shard(plan_manifest, "source_files", partition).to_pylist()


def _assign(spool_path: str, total: int, partitions: int, config: RunConfig) -> Iterator[pa.Table]:
    """One table of listing rows per partition, in order: each file goes to the partition its
    byte midpoint falls in, so partitions are contiguous and about total / partitions bytes."""
    target = total / partitions if total else 1
    rows: list[dict[str, Any]] = []
    current, cumulative = 0, 0
    for batch in pq.ParquetFile(spool_path).iter_batches(batch_size=LISTING_BATCH):
        for row in batch.to_pylist():
            weight = _weight(row, config)
            index = min(partitions - 1, int((cumulative + weight / 2) // target)) if total else 0
            cumulative += weight
            while index > current:
                yield pa.Table.from_pylist(rows, SOURCE_FILES)
                current, rows = current + 1, []
            rows.append({"partition": index, **row})
    while current < partitions:
        yield pa.Table.from_pylist(rows, SOURCE_FILES)
        current, rows = current + 1, []


def _weight(row: dict, config: RunConfig) -> int:
    """What reading a listed file costs, in bytes: nothing for a file rejected without being read."""
    size = row["size_bytes"]
    return 0 if row["reject_reason"] or size > config.max_file_bytes else size


def _row(file: SourceFile) -> dict:
    reason, detail = file.reject or (None, None)
    return {"uri": file.uri, "size_bytes": file.size, "suffix": file.suffix, "local_path": file.local_path,
            "reject_reason": reason, "reject_detail": detail}
