"""Near-duplicate chunks: within a run (plan_shards keeps the first of each group, like exact
duplicates) and against the chunks earlier runs of the DAG generated from.

Earlier runs' chunks live next to the ledger, in `<store>/<dag_id>/_neardup/`: one part per run,
`part-<run_id>-<digest>.parquet` (columns scope, task_types, sketch, run_id), written by the ledger
task (`record_signatures`) only after publish succeeded, like the ledger itself. A sketch is the
chunk's MinHash signature with each value truncated to 16 bits (256 bytes a chunk, half the
signature; parts of the older format, with whole signatures, are read as sketches).
`scope` is the ledger's processing target (`ledger.target_key`: model, revision, Hub repo, export),
so a chunk is dropped as already done only for the same target and only when an earlier run
generated every task type it needs; otherwise it goes on for the task types still missing (a run
that adds `ynqa` to `[exqa]` still generates ynqa for the chunks it has seen). `full_refresh`
ignores them; so does every run for the chunks of runs a rollback revoked (`ledger.revoked_tags`).

A night's cost follows the night: `load_earlier` takes tonight's chunks' sketches (only when
some are recorded), then scans the recorded ones a row group at a time (LSH bands over the
sketches find candidates, a candidate that agrees on at least the threshold's share of its sketch
is a near-duplicate), keeping only what covers tonight's chunks. Memory: tonight's sketches and
band keys (about 350 bytes a chunk) and one row group, never the history. `record_signatures`
streams the chunk stage's signatures into its part, a local file that the store uploads from its
path (ArtifactStore.write_file): it holds a row group.

Past COMPACT_AFTER_PARTS parts, recording compacts them into one (parts.py, the ledger's protocol:
a crash at any point loses nothing, and a part that vanishes under a reader makes it list again).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks import minhash
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    CHUNK_SIGNATURES,
    Manifest,
    RunRef,
    StageName,
    canonical_json,
    file_sha256,
)
from bonito_tasks.ledger import LedgerUpdate, of_runs, revoked_tags, target_key
from bonito_tasks.parts import PART, Compaction, PartsFolder, Snapshot, name_of
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import ArtifactStore, safe_segment

log = logging.getLogger(__name__)

COMPACT_AFTER_PARTS = 64
PARAMS_KEY = b"bonito.neardup.params"  # JSON of the MinHash settings the signatures were made with
REPLACES_KEY = b"bonito.neardup.replaces"
PARAMS = {"num_perm": minhash.NUM_PERM, "seed": minhash.SEED, "ngram": minhash.NGRAM, "version": 1}
SKETCH_PERM = minhash.NUM_PERM  # all of the signature's values (fewer miss near-duplicates at J = 0.8)
SKETCHES = pa.schema([
    pa.field("scope", pa.string(), nullable=False),
    pa.field("task_types", pa.list_(pa.string()), nullable=False),
    pa.field("sketch", pa.binary(SKETCH_PERM * 2), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])
ROW_GROUP = 65_536


def neardup_prefix(dag_id: str) -> str:
    return f"{safe_segment(dag_id)}/_neardup"


def signature_array(sigs: np.ndarray) -> pa.Array:
    """Signatures (n x NUM_PERM uint32) as a fixed-size binary column, without a copy per row."""
    data = np.ascontiguousarray(sigs, dtype="<u4")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(minhash.SIGNATURE_BYTES), len(data),
                                                [None, pa.py_buffer(data.tobytes())])


def signature_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The inverse of signature_array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary(minhash.SIGNATURE_BYTES))
    column = column.cast(pa.binary(minhash.SIGNATURE_BYTES))
    if not len(column):
        return np.zeros((0, minhash.NUM_PERM), dtype=np.uint32)
    data = np.frombuffer(column.buffers()[1], dtype="<u4")
    start = column.offset * minhash.NUM_PERM
    return data[start:start + len(column) * minhash.NUM_PERM].reshape(len(column), minhash.NUM_PERM)


def sketch_of(sigs: np.ndarray) -> np.ndarray:
    """(n x SKETCH_PERM) uint16: the first values of each MinHash signature, truncated to 16 bits."""
    return (sigs[:, :SKETCH_PERM] & 0xFFFF).astype(np.uint16)


class EarlierRuns:
    """For tonight's chunks, by (partition, row): the task types earlier runs generated for chunks
    nearly the same (kept only for the chunks that have some)."""

    def __init__(self, covered: dict[int, tuple[np.ndarray, list[frozenset[str]]]], scanned: int):
        self._covered, self.scanned = covered, scanned  # partition -> (its covered rows, sorted; their kinds)

    def __len__(self) -> int:
        """Recorded chunks scanned for this target."""
        return self.scanned

    def covered(self, partition: int, rows: np.ndarray) -> list[frozenset[str]]:
        """Per row of `rows`: the task types earlier runs generated for it (empty: none)."""
        hits = self.hits(partition, rows)
        return [hits.get(i, frozenset()) for i in range(len(rows))]

    def hits(self, partition: int, rows: np.ndarray) -> dict[int, frozenset[str]]:
        """Position in `rows` -> the task types earlier runs generated for it, for the covered rows only."""
        if partition not in self._covered:
            return {}
        hit_rows, kinds = self._covered[partition]
        positions = np.flatnonzero(np.isin(rows, hit_rows))
        return dict(zip(positions.tolist(), (kinds[k] for k in np.searchsorted(hit_rows, rows[positions]).tolist())))


def load_earlier(store: ArtifactStore, dag_id: str, config: RunConfig,
                 tonight: Iterable[tuple[int, np.ndarray]] = ()) -> EarlierRuns | None:
    """What earlier runs generated from, for tonight's chunks (`tonight`: (partition, signatures of
    its next rows), in row order); None when near-duplicates across runs are off (no threshold,
    `near_dup_across_runs` false, or `full_refresh`)."""
    threshold = config.near_dup_threshold
    if threshold is None or not config.near_dup_across_runs or config.full_refresh:
        return None
    folder = _parts(store, dag_id)
    if not folder.snapshot().live:  # no history: tonight's chunks are not even read
        return EarlierRuns({}, 0)
    bands, rows_per_band = minhash.lsh_params(threshold, SKETCH_PERM)
    owners, owner_rows = [], []  # tonight's row i -> partition, row
    sketches: list[np.ndarray] = []
    next_row: dict[int, int] = {}
    for partition, sigs in tonight:
        start = next_row.get(partition, 0)
        owners.append(np.full(len(sigs), partition, dtype=np.int64))
        owner_rows.append(np.arange(start, start + len(sigs), dtype=np.int64))
        next_row[partition] = start + len(sigs)
        sketches.append(sketch_of(sigs))
    night = np.concatenate(sketches) if sketches else np.zeros((0, SKETCH_PERM), np.uint16)
    night_keys = minhash.band_keys(night.astype(np.uint32), bands, rows_per_band)
    covered: dict[int, frozenset[str]] = {}  # tonight's row -> the task types earlier runs generated
    scope = target_key(config)
    revoked = revoked_tags(store, dag_id)  # runs a rollback revoked: their chunks are generated again

    def scan(snap: Snapshot) -> int:
        scanned = 0
        for key in snap.live:
            reader = pq.ParquetFile(io.BytesIO(folder.read(key)))
            if json.loads((reader.schema_arrow.metadata or {}).get(PARAMS_KEY, b"{}")) != PARAMS:
                log.warning("near-duplicate signatures %s were made with other MinHash settings: ignored", key)
                continue
            for batch in reader.iter_batches(batch_size=ROW_GROUP):
                table = _as_sketches(pa.Table.from_batches([batch]))
                table = table.filter(pc.equal(table["scope"], scope))
                if revoked:
                    table = table.filter(pc.invert(of_runs(table["run_id"], revoked)))
                if not table.num_rows or not len(night):
                    scanned += table.num_rows
                    continue
                scanned += table.num_rows
                history = sketch_matrix(table["sketch"])
                kinds = [frozenset(t) for t in table["task_types"].to_pylist()]
                for i, j in _near_pairs(night, night_keys, history, bands, rows_per_band, threshold):
                    covered[i] = covered.get(i, frozenset()) | kinds[j]
        return scanned

    scanned = folder.scanned(scan)
    partition_of = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    row_of = np.concatenate(owner_rows) if owner_rows else np.zeros(0, np.int64)
    by_partition: dict[int, tuple[np.ndarray, list[frozenset[str]]]] = {}
    hit = np.fromiter(sorted(covered), np.int64, len(covered))
    for partition in np.unique(partition_of[hit]).tolist():
        own = hit[partition_of[hit] == partition]  # in row order
        by_partition[partition] = (row_of[own], [covered[i] for i in own.tolist()])
    hits = len(covered)
    if scanned:
        log.info("near-duplicates: %d chunk sketch(es) of earlier runs scanned for this target; %d of tonight's %d "
                 "chunk(s) nearly repeat one", scanned, hits, len(night))
    return EarlierRuns(by_partition, scanned)


def _near_pairs(night: np.ndarray, night_keys: np.ndarray, history: np.ndarray, bands: int, rows: int,
                threshold: float) -> Iterator[tuple[int, int]]:
    """(tonight row, history row) pairs sharing a band whose sketches agree on >= threshold."""
    history_keys = minhash.band_keys(history.astype(np.uint32), bands, rows)
    seen: set[tuple[int, int]] = set()
    for band in range(bands):
        hit = np.flatnonzero(np.isin(night_keys[:, band], history_keys[:, band]))
        if not len(hit):
            continue
        by_key: dict[int, list[int]] = {}
        for j in np.flatnonzero(np.isin(history_keys[:, band], night_keys[hit, band])).tolist():
            by_key.setdefault(int(history_keys[j, band]), []).append(j)
        for i in hit.tolist():
            for j in by_key.get(int(night_keys[i, band]), []):
                if (i, j) not in seen and np.mean(night[i] == history[j]) >= threshold:
                    seen.add((i, j))
                    yield i, j


def _as_sketches(table: pa.Table) -> pa.Table:
    """A part's rows as SKETCHES (a part of the older format holds whole signatures)."""
    if "sketch" not in table.column_names:
        sketch = sketch_of(signature_matrix(table["signature"]))
        table = table.append_column("sketch", pa.array([s.tobytes() for s in sketch], pa.binary(SKETCH_PERM * 2)))
    return table.select(SKETCHES.names).cast(SKETCHES)


def sketch_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not len(column):
        return np.zeros((0, SKETCH_PERM), dtype=np.uint16)
    data = np.frombuffer(column.buffers()[1], dtype=np.uint16, count=(column.offset + len(column)) * SKETCH_PERM)
    return data[column.offset * SKETCH_PERM:].reshape(len(column), SKETCH_PERM)


def record_signatures(store: ArtifactStore, run: RunRef, config: RunConfig) -> LedgerUpdate:
    """Record the signatures of the chunks this run generated from (the chunk stage's
    `chunk_signatures`) for later runs. Call only after publish succeeded (the ledger task does).
    Idempotent: a retry writes the same part. Then compacts past COMPACT_AFTER_PARTS parts. Returns
    the ledger task's fields about signatures (neardup_part, signatures_recorded, neardup_compaction)."""
    chunks = StageWriter(store, run, StageName.CHUNK).committed()
    if chunks is None or not chunks.shards_of("chunk_signatures"):
        return LedgerUpdate()
    folder = _parts(store, run.dag_id)
    with tempfile.TemporaryDirectory(prefix="bonito-signatures-") as scratch:
        part = Path(scratch) / "part.parquet"
        recorded = _write_part_file(_sketch_rows(store, chunks, run, config), part)
        name = f"{safe_segment(run.run_id)}-{file_sha256(part)[:16]}"
        for old in store.list(folder.prefix):  # an earlier attempt of this run that recorded otherwise
            if name_of(old).startswith(f"{PART}{safe_segment(run.run_id)}-") and \
                    name_of(old) != f"{PART}{name}.parquet":
                store.delete(old)
        key = folder.write(name, part)
    result = LedgerUpdate(neardup_part=key, signatures_recorded=recorded)
    try:
        result.neardup_compaction = compact(store, run.dag_id)
    except Exception as err:  # housekeeping: the next run compacts
        log.warning("near-duplicate signature compaction failed: %s: %s", type(err).__name__, err)
        result.neardup_compaction = Compaction(error=f"{type(err).__name__}: {err}")
    log.info("near-duplicates: recorded %d chunk signature(s) in %s", recorded, key)
    return result


def compact(store: ArtifactStore, dag_id: str, max_parts: int = COMPACT_AFTER_PARTS) -> Compaction:
    """One compacted part for the live parts when there are more than `max_parts` (parts.py)."""
    folder = _parts(store, dag_id)

    def merge(live: list[str]) -> tuple[pa.Table, dict[bytes, bytes]]:
        tables = [_as_sketches(pq.read_table(io.BytesIO(folder.read(k)))) for k in live]
        return pa.concat_tables(tables), {PARAMS_KEY: canonical_json(PARAMS).encode()}

    return folder.compact(max_parts, merge)


def _sketch_rows(store: ArtifactStore, chunks: Manifest, run: RunRef, config: RunConfig) -> Iterator[pa.Table]:
    """The rows of SKETCHES for the chunks' signatures, one `chunk_signatures` part at a time."""
    scope, every = target_key(config), pa.scalar(sorted(config.task_types), pa.list_(pa.string()))
    for i in range(len(chunks.shards_of("chunk_signatures"))):
        table = store.read_shard(chunks, "chunk_signatures", i, ["signature", "task_types"])
        n = table.num_rows
        # Task types sorted; null or none (a chunk of a document with all of them to do): all of the run's.
        given = table["task_types"].combine_chunks()
        task_types = _sorted_lists(pc.if_else(pc.fill_null(pc.greater(pc.list_value_length(given), 0), False),
                                              given, every))
        sketch = np.ascontiguousarray(sketch_of(signature_matrix(table["signature"])))
        yield pa.table({
            "scope": pa.repeat(scope, n),
            "task_types": task_types,
            "sketch": pa.FixedSizeBinaryArray.from_buffers(pa.binary(SKETCH_PERM * 2), n,
                                                           [None, pa.py_buffer(sketch.tobytes())]),
            "run_id": pa.repeat(run.run_id, n),
        }, schema=SKETCHES)


def _sorted_lists(lists: pa.Array) -> pa.Array:
    """Each list (none null) with its values sorted."""
    flat, owner = pc.list_flatten(lists), pc.list_parent_indices(lists)
    order = pc.sort_indices(pa.table({"owner": owner, "value": flat}),
                            sort_keys=[("owner", "ascending"), ("value", "ascending")])
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(pc.list_value_length(lists).to_numpy(zero_copy_only=False), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat.take(order), type=pa.list_(pa.string()))


def _part_bytes(table: pa.Table) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        part = Path(scratch) / "part.parquet"
        _write_part_file([table], part)
        return part.read_bytes()


def _write_part_file(tables: Iterable[pa.Table], sink: Path) -> int:
    """Write a part's Parquet file (row groups of ROW_GROUP rows, written as `tables` come: a row
    group is held at a time); returns its rows."""
    schema = SKETCHES.with_metadata({PARAMS_KEY: canonical_json(PARAMS).encode()})
    rows, pending = 0, []
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for table in tables:
            pending.append(table)
            rows += table.num_rows
            buffered = pa.concat_tables(pending)
            while buffered.num_rows >= ROW_GROUP:
                writer.write_table(buffered.slice(0, ROW_GROUP).cast(schema), row_group_size=ROW_GROUP)
                buffered = buffered.slice(ROW_GROUP)
            pending = [buffered]
        buffered = pa.concat_tables(pending) if pending else schema.empty_table()
        if buffered.num_rows or not rows:
            writer.write_table(buffered.cast(schema), row_group_size=ROW_GROUP)
        del pending, buffered
    return rows


def _parts(store: ArtifactStore, dag_id: str) -> PartsFolder:
    return PartsFolder(store, neardup_prefix(dag_id), REPLACES_KEY)


def chunk_signatures_table(chunk_ids: list[str] | pa.Array | pa.ChunkedArray, sigs: np.ndarray,
                           task_types: list[list[str] | None] | pa.Array | pa.ChunkedArray) -> pa.Table:
    """Rows of CHUNK_SIGNATURES."""
    return pa.table({"chunk_id": chunk_ids, "signature": signature_array(sigs), "task_types": task_types},
                    schema=CHUNK_SIGNATURES)


def read_signatures(store: ArtifactStore, manifest: Manifest, part: int) -> np.ndarray:
    return signature_matrix(store.read_shard(manifest, "chunk_signatures", part, ["signature"])["signature"])
