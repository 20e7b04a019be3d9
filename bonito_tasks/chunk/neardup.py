"""Near-duplicate chunks: within a run (plan_shards keeps the first of each group, like exact
duplicates) and against the chunks earlier runs of the DAG generated from.

Earlier runs' signatures live next to the ledger, in `<store>/<dag_id>/_neardup/`: one part per run,
`part-<run_id>-<digest>.parquet` (columns scope, task_types, signature, run_id), written by the
ledger task (`record_signatures`) only after publish succeeded, like the ledger itself. `scope` is
the ledger's processing target (`ledger.target_key`: model, revision, Hub repo, export), so a chunk
is dropped as already done only for the same target and only when an earlier run generated every
task type it needs; otherwise it goes on for the task types still missing (a run that adds `ynqa`
to `[exqa]` still generates ynqa for the chunks it has seen). `full_refresh` ignores them.

Past COMPACT_AFTER_PARTS parts, recording compacts them into one (parts.py, the ledger's protocol:
a crash at any point loses nothing, and a part that vanishes under a reader makes it list again).

Memory: the signatures (512 bytes each) and their LSH band keys (12 bytes per band), never texts.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks import minhash
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CHUNK_SIGNATURES, Manifest, RunRef, StageName, canonical_json, sha256_hex
from bonito_tasks.ledger import target_key
from bonito_tasks.parts import PART, PartsFolder, Snapshot, name_of, part_bytes
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import ArtifactStore, safe_segment

log = logging.getLogger(__name__)

COMPACT_AFTER_PARTS = 64
PARAMS_KEY = b"bonito.neardup.params"  # JSON of the MinHash settings the signatures were made with
REPLACES_KEY = b"bonito.neardup.replaces"
PARAMS = {"num_perm": minhash.NUM_PERM, "seed": minhash.SEED, "ngram": minhash.NGRAM, "version": 1}
SIGNATURES = pa.schema([
    pa.field("scope", pa.string(), nullable=False),
    pa.field("task_types", pa.list_(pa.string()), nullable=False),
    pa.field("signature", pa.binary(minhash.SIGNATURE_BYTES), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])


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


class EarlierRuns:
    """The signatures earlier runs recorded for this run's processing target, with the task types
    each chunk was generated for."""

    def __init__(self, threshold: float):
        self.index = minhash.NearDupIndex(threshold)
        self.kinds: list[frozenset[str]] = []  # distinct task type sets
        self.kind_of = np.zeros(0, dtype=np.int32)  # signature id -> index into kinds

    def __len__(self) -> int:
        return len(self.index)

    def covered(self, sigs: np.ndarray) -> list[frozenset[str]]:
        """Per signature: the task types earlier runs generated for chunks nearly the same."""
        covered: list[frozenset[str]] = [frozenset()] * len(sigs)
        if not len(self.index) or not len(sigs):
            return covered
        rows, ids, _ = self.index.matches(sigs)
        for row, kind in zip(rows.tolist(), self.kind_of[ids].tolist()):
            covered[row] = covered[row] | self.kinds[kind]
        return covered


def load_earlier(store: ArtifactStore, dag_id: str, config: RunConfig) -> EarlierRuns | None:
    """The earlier runs' signatures for the run's target; None when near-duplicates across runs are
    off (no threshold, `near_dup_across_runs` false, or `full_refresh`)."""
    threshold = config.near_dup_threshold
    if threshold is None or not config.near_dup_across_runs or config.full_refresh:
        return None
    scope = target_key(config)

    def scan(snap: Snapshot) -> EarlierRuns:
        earlier, kind_ids = EarlierRuns(threshold), []
        kinds: dict[frozenset[str], int] = {}
        for key in snap.live:
            table = pq.read_table(io.BytesIO(folder.read(key)))
            if json.loads((table.schema.metadata or {}).get(PARAMS_KEY, b"{}")) != PARAMS:
                log.warning("near-duplicate signatures %s were made with other MinHash settings: ignored", key)
                continue
            table = table.filter(pc.equal(table["scope"], scope))
            if not table.num_rows:
                continue
            earlier.index.add(signature_matrix(table["signature"]))
            for types in table["task_types"].to_pylist():
                kind_ids.append(kinds.setdefault(frozenset(types), len(kinds)))
        earlier.kinds = list(kinds)
        earlier.kind_of = np.asarray(kind_ids, dtype=np.int32)
        return earlier

    folder = _parts(store, dag_id)
    earlier = folder.scanned(scan)
    if len(earlier):
        log.info("near-duplicates: %d chunk signature(s) of earlier runs for this target (%.1f MiB)", len(earlier),
                 earlier.index.nbytes / 2**20)
    return earlier


def record_signatures(store: ArtifactStore, run: RunRef, config: RunConfig) -> dict:
    """Record the signatures of the chunks this run generated from (the chunk stage's
    `chunk_signatures`) for later runs. Call only after publish succeeded (the ledger task does).
    Idempotent: a retry writes the same part. Then compacts past COMPACT_AFTER_PARTS parts."""
    chunks = StageWriter(store, run, StageName.CHUNK).committed()
    if chunks is None or not chunks.shards_of("chunk_signatures"):
        return {"neardup_part": None, "signatures_recorded": 0}
    table = store.read_table(chunks, "chunk_signatures", columns=["signature", "task_types"])
    task_types = [sorted(t) if t else sorted(config.task_types) for t in table["task_types"].to_pylist()]
    part = pa.table({
        "scope": pa.array([target_key(config)] * table.num_rows, pa.string()),
        "task_types": pa.array(task_types, pa.list_(pa.string())),
        "signature": table["signature"].combine_chunks().cast(pa.binary(minhash.SIGNATURE_BYTES)),
        "run_id": pa.array([run.run_id] * table.num_rows, pa.string()),
    }, schema=SIGNATURES)
    data = _part_bytes(part)
    folder = _parts(store, run.dag_id)
    name = f"{safe_segment(run.run_id)}-{sha256_hex(data)[:16]}"
    for old in store.list(folder.prefix):  # an earlier attempt of this run that recorded otherwise
        if name_of(old).startswith(f"{PART}{safe_segment(run.run_id)}-") and name_of(old) != f"{PART}{name}.parquet":
            store.delete(old)
    key = folder.write(name, data)
    result = {"neardup_part": key, "signatures_recorded": part.num_rows}
    try:
        result["neardup_compaction"] = compact(store, run.dag_id)
    except Exception as err:  # housekeeping: the next run compacts
        log.warning("near-duplicate signature compaction failed: %s: %s", type(err).__name__, err)
    log.info("near-duplicates: recorded %d chunk signature(s) in %s", part.num_rows, key)
    return result


def compact(store: ArtifactStore, dag_id: str, max_parts: int = COMPACT_AFTER_PARTS) -> dict:
    """One compacted part for the live parts when there are more than `max_parts` (parts.py)."""
    folder = _parts(store, dag_id)

    def merge(live: list[str]) -> tuple[pa.Table, dict[bytes, bytes]]:
        tables = [pq.read_table(io.BytesIO(folder.read(k))).cast(SIGNATURES) for k in live]
        return pa.concat_tables(tables), {PARAMS_KEY: canonical_json(PARAMS).encode()}

    return folder.compact(max_parts, merge)


def _part_bytes(table: pa.Table) -> bytes:
    return part_bytes(table, {PARAMS_KEY: canonical_json(PARAMS).encode()})


def _parts(store: ArtifactStore, dag_id: str) -> PartsFolder:
    return PartsFolder(store, neardup_prefix(dag_id), REPLACES_KEY)


def chunk_signatures_table(chunk_ids: list[str], sigs: np.ndarray, task_types: list[list[str] | None]) -> pa.Table:
    """Rows of CHUNK_SIGNATURES."""
    return pa.table({"chunk_id": pa.array(chunk_ids, pa.string()), "signature": signature_array(sigs),
                     "task_types": pa.array(task_types, pa.list_(pa.string()))}, schema=CHUNK_SIGNATURES)


def read_signatures(store: ArtifactStore, manifest: Manifest, part: int) -> np.ndarray:
    return signature_matrix(store.read_shard(manifest, "chunk_signatures", part, ["signature"])["signature"])
