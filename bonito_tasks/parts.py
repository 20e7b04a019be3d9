"""Parts, then compaction: a folder of Parquet parts that readers read as one table.

Writers add immutable parts (`part-*.parquet`, one atomic write each: a crash leaves no half
part). Past `max_parts` live parts, `compact` writes `compact-<digest>.parquet`, the merge of
the live parts, whose Parquet footer lists the names of every part it replaces, then deletes them.
Readers ignore the parts a present compacted part lists, whether deleted yet or not, so every
crash point leaves a folder that loses nothing and counts nothing twice; leftovers of a crash are
deleted by the next call. A part that vanishes under a reader (a compaction deleted it) makes the
reader list the folder again. A commit adds files and never rewrites them, as in Delta Lake or
Iceberg, on a plain object store. Used by the ledger and by the near-duplicate signatures.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from bonito_tasks.contracts import canonical_json, sha256_hex
from bonito_tasks.store import ArtifactStore, StoreError

log = logging.getLogger(__name__)

PART, COMPACT = "part-", "compact-"
SCAN_ATTEMPTS = 5
T = TypeVar("T")


class Vanished(Exception):
    """A listed part disappeared before it was read (a compaction deleted it)."""


class Compaction(BaseModel):
    """What a compaction did: the live parts after it, the parts it replaced (0: none), the rows
    and name of the compacted part, the leftovers of an earlier crash it deleted; or its error."""

    model_config = ConfigDict(extra="forbid")

    live_parts: int = 0
    compacted_parts: int = 0
    rows: int = 0
    compact_part: str | None = None
    leftovers_deleted: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    live: list[str]  # keys of the parts to read, in name order
    covered: list[str]  # keys of parts a present compacted part replaces (leftovers of a compaction)


def name_of(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def part_bytes(table: pa.Table, metadata: dict[bytes, bytes]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), sink, compression="zstd")
    return sink.getvalue()


class PartsFolder:
    """The parts under `prefix`; `replaces_key` names the footer entry of a compacted part."""

    def __init__(self, store: ArtifactStore, prefix: str, replaces_key: bytes):
        self.store, self.prefix, self.replaces_key = store, prefix, replaces_key

    def snapshot(self) -> Snapshot:
        keys = sorted(k for k in self.store.list(self.prefix)
                      if name_of(k).startswith((PART, COMPACT)) and k.endswith(".parquet"))
        covered = {name for k in keys if name_of(k).startswith(COMPACT) for name in self.replaces(k)}
        return Snapshot(live=[k for k in keys if name_of(k) not in covered],
                        covered=[k for k in keys if name_of(k) in covered])

    def replaces(self, key: str) -> list[str]:
        """The part names a compacted part replaces, from its Parquet footer only."""
        try:
            with self.store.open_read(key) as f:
                metadata = pq.read_schema(f).metadata or {}
        except Exception as err:
            if not self.store.exists(key):
                raise Vanished(key) from err
            raise
        return json.loads(metadata.get(self.replaces_key, b"[]"))

    def read(self, key: str) -> bytes:
        try:
            return self.store.read_bytes(key)
        except Exception as err:
            if not self.store.exists(key):
                raise Vanished(key) from err
            raise

    def scanned(self, scan: Callable[[Snapshot], T]) -> T:
        """scan(snapshot), listed again from the start when a part vanished under it."""
        for _ in range(SCAN_ATTEMPTS):
            try:
                return scan(self.snapshot())
            except Vanished as gone:
                log.info("part %s vanished while read (a compaction ran): reading again", gone)
        raise StoreError(f"the parts under {self.prefix} kept changing while they were read")

    def write(self, name: str, data: bytes | Path) -> str:
        """Add one part (`part-<name>.parquet`: bytes, or a local file streamed) in one atomic
        write; returns its key."""
        key = f"{self.prefix}/{PART}{name}.parquet"
        if isinstance(data, Path):
            self.store.write_file(key, data)
        else:
            self.store.write_bytes(key, data)
        return key

    def compact(self, max_parts: int, merge: Callable[[list[str]], tuple[pa.Table, dict[bytes, bytes]]]
                ) -> Compaction:
        """Replace the live parts by one compacted part when there are more than `max_parts`:
        `merge(live keys)` gives its rows and footer metadata. Always deletes leftovers."""

        def run(snap: Snapshot) -> Compaction:
            if len(snap.live) <= max_parts:
                for key in snap.covered:  # a present compacted part holds their rows
                    self.store.delete(key)
                return Compaction(live_parts=len(snap.live), leftovers_deleted=len(snap.covered))
            table, metadata = merge(snap.live)
            replaces = sorted(name_of(k) for k in snap.live + snap.covered)
            key = f"{self.prefix}/{COMPACT}{sha256_hex(canonical_json(replaces))[:16]}.parquet"
            metadata = {**metadata, self.replaces_key: json.dumps(replaces).encode()}
            self.store.write_bytes(key, part_bytes(table, metadata))
            for old in snap.live + snap.covered:
                if old != key:
                    self.store.delete(old)
            log.info("compacted %d part(s) under %s into %s (%d rows)", len(replaces), self.prefix, name_of(key),
                     table.num_rows)
            return Compaction(live_parts=1, compacted_parts=len(replaces), rows=table.num_rows, compact_part=key)

        return self.scanned(run)
