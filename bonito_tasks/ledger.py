"""The ledger: what a DAG's earlier runs already did, so that a nightly run does only what is new.

It holds two kinds of facts, one row each, in `<store>/<dag_id>/_ledger/*.parquet`:

- `done`: document `key` (its doc_id) was processed for `task_type` into the processing target
  `scope` (`target_key`: the model, its revision and where the dataset is published) and that
  run published. A new task type, model, revision or publish target therefore processes the
  known documents again, for what is new only; sampling and chunking params are not part of
  the target (see `processing_target`).
- `reject`: the file with ledger key `key` was rejected for `reason` under the extraction
  settings `scope` (`reject_scope`). The key is the sha256 of the file's bytes when it was read,
  else a hash of what decided the reject without reading it (URI, size, mtime, reason, detail),
  so a changed file is read again. I/O errors (`unreadable`) are never remembered.
- `revoke`, `restore`, `skip`: a rollback of the published dataset (bonito_dev.rollback) to a
  release decided about the run whose release tag (`release.tag_name`) is `key`: `revoke`, its
  documents are processed again (its `done` rows are ignored, and so are its near-duplicate
  signatures); `skip`, they stay done (the rollback recorded, nothing revoked); `restore`, a later
  rollback brought its release back. `scope` is the rollback's Hub commit, `reason` who and why;
  the run's latest such row counts.

Parts. `update_ledger` writes one part per run after publish succeeded,
`part-<run_id>-<digest>.parquet`, in one atomic write; the digest is a hash of the part's
rows, so an object name never holds two different contents: a retry rewrites the same object,
and a retry that records something else writes another part. `compact_ledger` replaces the parts
by one `compact-<digest>.parquet` once there are more than `COMPACT_AFTER_PARTS`: it writes the
compacted part first, listing in its metadata the names of the parts it replaces, then deletes
them. Readers ignore a part that a present compacted part lists, and de-duplicate the rest, so
every crash point leaves a ledger that loses nothing and counts nothing twice; leftovers of a
crash are deleted by the next compaction. Parts written before this format (`doc_id`,
`source_uri`, `run_id`, `recorded_at`) are read as done for every target and task type.

Memory: `load_ledger` keeps 32-byte digests and one shared set of task types per distinct
combination (about 100 bytes per document); it never reads texts. `update_ledger` holds the run's
part as Arrow tables (233 bytes per document and task type in benchmarks/plan_ledger_bench.py),
built per documents shard with Arrow compute, no Python object per row.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import TABLES, Manifest, RunRef, canonical_json, sha256_hex
from bonito_tasks.parts import Compaction, PartsFolder, Vanished, part_bytes
from bonito_tasks.release import tag_name
from bonito_tasks.stage import code_version
from bonito_tasks.store import ArtifactStore, safe_segment

log = logging.getLogger(__name__)

COMPACT_AFTER_PARTS = 64  # compact once more parts than this are live
ANY = "*"  # scope and task_type of rows carried over from the first format: done for everything
DONE, REJECT = "done", "reject"
REVOKE, RESTORE, SKIP = "revoke", "restore", "skip"
ROLLBACK_KINDS = (REVOKE, RESTORE, SKIP)
NOT_REMEMBERED = frozenset({"unreadable"})  # I/O errors may pass: such files are tried every run
REPLACES_KEY = b"bonito.ledger.replaces"  # compacted part's metadata: JSON list of the part names it replaces
TARGETS_KEY = b"bonito.ledger.targets"  # JSON {target_key: target}: what the hashes in `scope` stand for

LEDGER = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "done", "reject" or one of ROLLBACK_KINDS
        pa.field("key", pa.string(), nullable=False),  # done: doc_id; reject: the file's ledger key; rollback: a tag
        pa.field("scope", pa.string(), nullable=False),  # done: target_key; reject: reject_scope; rollback: commit
        pa.field("task_type", pa.string()),  # done: the task type processed; else null
        pa.field("reason", pa.string()),  # reject: the reject reason; rollback: who and why; done: null
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("recorded_at", pa.string(), nullable=False),
    ]
)
IDENTITY = ["kind", "key", "scope", "task_type"]  # one fact; the other columns say where and when
LEGACY = ["doc_id", "source_uri", "run_id", "recorded_at"]


def ledger_prefix(dag_id: str) -> str:
    return f"{safe_segment(dag_id)}/_ledger"


# ---- What a row is about


def processing_target(config: RunConfig) -> dict[str, Any]:
    """What a document is processed into, besides its task types: the model and its revision as
    configured, and where the dataset is published (neither Hub repo nor export: the store only).

    Sampling params (temperature, top_p, n, max_tokens), chunking and validation thresholds are
    deliberately left out: they tune how the same dataset is made, and a changed knob would
    otherwise regenerate the whole corpus on the next nightly run (hours of GPU) and, in append
    mode, add a second set of rows for every chunk. Use `full_refresh` to regenerate on purpose.
    The model is keyed by the configured id and revision, not by hashing a local model's weights:
    the extract worker need not have the model, and both ends must compute the same key; point
    `model_id` at a new folder (or pin a new revision) to process the corpus with a new model.
    """
    return {
        "model_id": config.model_id.rstrip("/") or config.model_id,
        "model_revision": config.model_revision,
        "hub_repo_id": config.hub_repo_id,
        "export_s3_uri": config.export_s3_uri.rstrip("/") if config.export_s3_uri else None,
    }


def target_key(config: RunConfig) -> str:
    """sha256 of the canonical JSON of `processing_target`."""
    return sha256_hex(canonical_json(processing_target(config)))


def reject_scope(config: RunConfig) -> str:
    """What decides a reject besides the file: the settings and the extract stage's code. A
    changed `max_file_bytes` or `text_column`, or a new release of the readers, tries the
    remembered rejects once more."""
    extract_code = code_version("bonito_tasks.extract")
    return sha256_hex(canonical_json({"max_file_bytes": config.max_file_bytes, "text_column": config.text_column,
                                      "extract_code": extract_code}))


def _mtime_ns(path: str | None) -> int | None:
    """Last modification of a local file, or of the newest file in a local folder (a saved HF
    dataset); None for an object store (its reject keys use size and detail only)."""
    if not path:
        return None
    try:
        if os.path.isdir(path):
            return max((p.stat().st_mtime_ns for p in Path(path).rglob("*") if p.is_file()), default=None)
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def reject_key(file: Any, reject: Any) -> str | None:
    """How the ledger remembers a rejected file: the sha256 of its bytes when the reject came after
    reading them (`reject.content_sha256`), else a hash of what decided the reject without reading
    the content (URI, size, mtime, reason and detail: any change tries the file again). None for a
    reason that is not remembered. `file` is a SourceFile (uri, size, local_path); `reject` has
    `reason`, `detail` and optionally `content_sha256`."""
    if reject.reason in NOT_REMEMBERED:
        return None
    content = getattr(reject, "content_sha256", None)
    if content:
        return content
    return sha256_hex(canonical_json([file.uri, file.size, _mtime_ns(getattr(file, "local_path", None)),
                                      reject.reason, reject.detail]))


# ---- What extract consults


def _digest(key: str) -> bytes | str:
    """A hex sha256 as its 32 bytes (half the memory of the string); anything else unchanged."""
    try:
        return bytes.fromhex(key) if len(key) == 64 else key
    except ValueError:
        return key


@dataclass
class Known:
    """What the ledger knows for one run: per document the task types already done for the run's
    processing target, and the rejects remembered under the run's extraction settings."""

    task_types: tuple[str, ...] = ()
    done: dict[bytes | str, frozenset[str]] = field(default_factory=dict)
    rejects: dict[bytes | str, str] = field(default_factory=dict)  # ledger key -> reason

    def pending(self, doc_id: str) -> list[str] | None:
        """The run's task types still to do for a document, in the run's order: None for all of
        them (the documents row's `pending_task_types` is then null), [] for none."""
        done = self.done.get(_digest(doc_id))
        if not done:
            return None
        if ANY in done:
            return []
        missing = [t for t in self.task_types if t not in done]
        return None if len(missing) == len(self.task_types) else missing

    def __contains__(self, doc_id: object) -> bool:
        """Whether every task type of the run is done for the document: skip it."""
        return isinstance(doc_id, str) and self.pending(doc_id) == []

    def rejected(self, key: str | None) -> str | None:
        """The reason a remembered reject had, or None when the ledger does not remember it."""
        return None if key is None else self.rejects.get(_digest(key))

    def __len__(self) -> int:
        return len(self.done)


NOTHING_KNOWN = Known()


def load_ledger(store: ArtifactStore, dag_id: str, config: RunConfig) -> Known:
    """What the DAG's ledger knows for this run's config. `full_refresh` ignores it all;
    `retry_rejects` ignores the remembered rejects."""
    task_types = tuple(config.task_types)
    if config.full_refresh:
        return Known(task_types)
    target, scope = target_key(config), reject_scope(config)
    remember_rejects = not config.retry_rejects
    revoked = revoked_tags(store, dag_id)

    def scan(parts: list[tuple[str, Callable[[], pa.Table]]]) -> Known:
        known = Known(task_types)
        interned: dict[frozenset[str], frozenset[str]] = {}
        for _, read in parts:
            table = read()
            is_done = pc.and_(pc.equal(table["kind"], DONE), pc.is_in(table["scope"], pa.array([target, ANY])))
            if revoked:
                is_done = pc.and_(is_done, pc.invert(of_runs(table["run_id"], revoked)))
            for batch in table.filter(is_done).select(["key", "task_type"]).to_batches(max_chunksize=65536):
                for key, task_type in zip(batch["key"].to_pylist(), batch["task_type"].to_pylist()):
                    digest = _digest(key)
                    had = known.done.get(digest)
                    if had is not None and task_type in had:
                        continue
                    now = frozenset((task_type,)) if had is None else had | {task_type}
                    known.done[digest] = interned.setdefault(now, now)
            if remember_rejects:
                is_reject = pc.and_(pc.equal(table["kind"], REJECT), pc.equal(table["scope"], scope))
                rows = table.filter(is_reject).select(["key", "reason"])
                for key, reason in zip(rows["key"].to_pylist(), rows["reason"].to_pylist()):
                    known.rejects[_digest(key)] = reason
        return known

    known = _scanned(store, dag_id, scan, columns=["kind", "key", "scope", "task_type", "reason", "run_id"])
    log.info("ledger: %d document(s) with work done for target %s, %d remembered reject(s)%s%s",
             len(known.done), target[:12], len(known.rejects), "" if remember_rejects else " (retry_rejects: ignored)",
             f"; the documents of the run(s) a rollback revoked are processed again: {', '.join(sorted(revoked))}"
             if revoked else "")
    return known


# ---- Rollbacks


def revoked_tags(store: ArtifactStore, dag_id: str) -> frozenset[str]:
    """The release tags of the runs a rollback revoked: those whose latest rollback row is `revoke`.
    Reads only the row groups of the parts that can hold rollback rows."""
    folder = _parts(store, dag_id)

    def rows(key: str) -> list[tuple[str, str, str]]:
        try:
            with store.open_read(key) as f:
                if "kind" not in pq.read_schema(f).names:  # the first format: done rows only
                    return []
                table = pq.read_table(f, columns=["recorded_at", "kind", "key"],
                                      filters=pc.is_in(pc.field("kind"), pa.array(ROLLBACK_KINDS)))
        except Exception as err:
            if not store.exists(key):
                raise Vanished(key) from err
            raise
        return list(zip(*(table[c].to_pylist() for c in table.column_names)))

    decisions = folder.scanned(lambda snap: [row for key in snap.live for row in rows(key)])
    latest = {key: kind for _, kind, key in sorted(decisions)}  # in the order recorded: the last counts
    return frozenset(tag for tag, kind in latest.items() if kind == REVOKE)


def of_runs(run_ids: pa.Array | pa.ChunkedArray, tags: frozenset[str]) -> pa.Array | pa.ChunkedArray:
    """Which of `run_ids` belong to a run whose release tag is in `tags` (a boolean mask)."""
    hit = [r for r in pc.unique(run_ids).to_pylist() if r is not None and tag_name(r) in tags]
    return pc.is_in(run_ids, pa.array(hit, pa.string()))


def record_rollback(store: ArtifactStore, dag_id: str, *, commit: str, source: str, removed: list[str],
                    returned: list[str], skip: bool, note: str) -> str | None:
    """Record a rollback made by Hub commit `commit` (`source`: where): the runs of the `removed`
    release tags revoked (their documents are processed again) or, with `skip`, marked skipped
    (they stay done); those of `returned` restored. One part, one atomic write (a retry writes the
    same part); returns its URI, or None when there is nothing to record."""
    rows = [(SKIP if skip else REVOKE, tag) for tag in removed] + [(RESTORE, tag) for tag in returned]
    if not rows:
        return None
    n, run = len(rows), RunRef(dag_id=dag_id, run_id=f"rollback-{commit[:12]}")
    table = pa.table({"kind": [k for k, _ in rows], "key": [t for _, t in rows], "scope": [commit] * n,
                      "task_type": pa.nulls(n, pa.string()), "reason": [note] * n, "source_uri": [source] * n,
                      "run_id": [run.run_id] * n, "recorded_at": [datetime.now(UTC).isoformat()] * n}, schema=LEDGER)
    return write_part(store, run, table)


# ---- Reading the parts


def _table(data: bytes, columns: list[str] | None = None) -> tuple[pa.Table, list[str], dict[str, Any]]:
    """A part's rows in the current schema (only `columns`, when given), the part names it
    replaces and its targets."""
    schema = pq.read_schema(io.BytesIO(data))
    metadata = schema.metadata or {}
    replaces = json.loads(metadata.get(REPLACES_KEY, b"[]"))
    targets = json.loads(metadata.get(TARGETS_KEY, b"{}"))
    names = columns or LEDGER.names
    if "kind" in schema.names:
        table = pq.read_table(io.BytesIO(data), columns=names)
    else:  # the first format: doc_ids a run published, for any target
        kept = [c for c in LEGACY if c == "doc_id" or c in names]  # doc_id, source_uri, run_id, recorded_at
        legacy = pq.read_table(io.BytesIO(data), columns=kept)
        n = legacy.num_rows
        table = pa.table({"kind": [DONE] * n, "key": legacy["doc_id"], "scope": [ANY] * n, "task_type": [ANY] * n,
                          "reason": pa.nulls(n, pa.string()), **{c: legacy[c] for c in kept if c != "doc_id"}})
    return table.select(names).cast(pa.schema([LEDGER.field(c) for c in names])), replaces, targets


def _parts(store: ArtifactStore, dag_id: str) -> PartsFolder:
    return PartsFolder(store, ledger_prefix(dag_id), REPLACES_KEY)


T = TypeVar("T")


def _scanned(store: ArtifactStore, dag_id: str, scan: Callable[[list[tuple[str, Callable[[], pa.Table]]]], T],
             columns: list[str] | None = None) -> T:
    """scan(parts) over the live parts, each read lazily (one in memory at a time, only `columns`);
    restarted from a new listing when a part vanished under it."""
    folder = _parts(store, dag_id)

    def reader(key: str) -> Callable[[], pa.Table]:
        return lambda: _table(folder.read(key), columns)[0]

    return folder.scanned(lambda snap: scan([(key, reader(key)) for key in snap.live]))


def _dedupe(table: pa.Table) -> pa.Table:
    """One row per fact (kind, key, scope, task_type): the earliest recorded, in a stable order. The
    done rows of a run a rollback decided about stay that run's own (a later rollback may revoke or
    restore it alone, and another run's record of the same fact must then still count)."""
    if not table.num_rows:
        return table
    rolled = pc.is_in(table["kind"], pa.array(ROLLBACK_KINDS))
    decided = frozenset(table.filter(rolled)["key"].to_pylist())
    own = pc.and_(pc.equal(table["kind"], DONE), of_runs(table["run_id"], decided))
    table = table.append_column("owner", pc.if_else(own, table["run_id"], pa.scalar("", pa.string())))
    identity = [*IDENTITY, "owner"]
    ordered = table.sort_by([*((c, "ascending") for c in identity), ("recorded_at", "ascending"),
                             ("run_id", "ascending")])
    rest = [c for c in LEDGER.names if c not in IDENTITY]
    grouped = ordered.group_by(identity, use_threads=False).aggregate([(c, "first") for c in rest])
    grouped = grouped.rename_columns([n.removesuffix("_first") for n in grouped.column_names])
    return grouped.select(LEDGER.names).cast(LEDGER).sort_by([(c, "ascending") for c in [*IDENTITY, "run_id"]])


def read_ledger(store: ArtifactStore, dag_id: str) -> pa.Table:
    """Every fact of the DAG's ledger, once each (the union of the live parts, de-duplicated)."""
    def scan(parts):
        tables = [read() for _, read in parts]
        return _dedupe(pa.concat_tables(tables) if tables else LEDGER.empty_table())

    return _scanned(store, dag_id, scan)


def live_parts(store: ArtifactStore, dag_id: str) -> list[str]:
    """The keys of the parts a reader reads now (not those a compacted part replaces)."""
    return _parts(store, dag_id).snapshot().live


# ---- Writing


def _part_bytes(table: pa.Table, targets: dict[str, Any]) -> bytes:
    return part_bytes(table, {TARGETS_KEY: canonical_json(targets).encode()})


def write_part(store: ArtifactStore, run: RunRef, table: pa.Table, targets: dict[str, Any] | None = None) -> str:
    """Write a run's facts (rows of LEDGER) as one part in one atomic write; its name holds the run
    id and a digest of its rows (recorded_at aside), so equal names mean equal facts."""
    table = table.select(LEDGER.names).cast(LEDGER).sort_by([(c, "ascending") for c in [*IDENTITY, "source_uri"]])
    facts = table.drop_columns(["recorded_at"]).combine_chunks()
    digest = hashlib.sha256()  # of the facts' Arrow IPC stream, hashed as it is written (never held)
    with pa.ipc.new_stream(pa.PythonFile(_Hashing(digest), mode="w"), facts.schema) as stream:
        stream.write_table(facts)
    del facts
    name = f"{safe_segment(run.run_id)}-{digest.hexdigest()[:16]}"
    return store.uri(_parts(store, run.dag_id).write(name, _part_bytes(table, targets or {})))


class _Hashing(io.RawIOBase):
    """A write-only file that feeds what is written to a hash."""

    def __init__(self, digest: Any):
        self.digest = digest

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return memoryview(data).nbytes


def _read_shard(store: ArtifactStore, manifest: Manifest, table: str, shard: int, columns: list[str],
                newer: str) -> pa.Table:
    """columns + [newer] of a shard; `newer` all null in a shard written before that column existed
    (an extract committed by the code before an upgrade that happened during the run)."""
    try:
        return store.read_shard(manifest, table, shard, columns=[*columns, newer])
    except pa.ArrowInvalid:
        part = store.read_shard(manifest, table, shard, columns=columns)
        return part.append_column(newer, pa.nulls(part.num_rows, TABLES[table].field(newer).type))


class LedgerUpdate(BaseModel):
    """What the ledger task recorded (its XCom): the ledger part written (None: nothing to record),
    documents and rejects recorded, the compaction; and, after a publish, the near-duplicate
    signatures recorded for later runs (chunk/neardup.py)."""

    model_config = ConfigDict(extra="forbid")

    ledger_part: str | None = None
    recorded: int = 0
    rejects_recorded: int = 0
    compaction: Compaction = Field(default_factory=Compaction)
    neardup_part: str | None = None
    signatures_recorded: int = 0
    neardup_compaction: Compaction | None = None


def update_ledger(store: ArtifactStore, run: RunRef, documents: Manifest, config: RunConfig, *,
                  published: bool = True, compact_after: int = COMPACT_AFTER_PARTS) -> LedgerUpdate:
    """Record a run's extract output: each document as done for the task types it was processed
    for (its `pending_task_types`, null: all of the run's) into the run's processing target, and
    each remembered reject. Call only after publish succeeded; with `published=False` (publish
    had nothing to do, or did not commit) only the rejects are recorded. Then compact the ledger
    when it has more than `compact_after` live parts."""
    recorded_at = datetime.now(UTC).isoformat()
    target, scope = target_key(config), reject_scope(config)
    all_types = pa.scalar(list(config.task_types), pa.list_(pa.string()))
    tables: list[pa.Table] = []

    def rows(kind: str, keys: pa.Array, row_scope: str, task_types: pa.Array, reasons: pa.Array,
             uris: pa.Array) -> pa.Table:
        n = len(keys)
        return pa.table({"kind": pa.repeat(kind, n), "key": keys, "scope": pa.repeat(row_scope, n),
                         "task_type": task_types, "reason": reasons, "source_uri": uris,
                         "run_id": pa.repeat(run.run_id, n), "recorded_at": pa.repeat(recorded_at, n)}, schema=LEDGER)

    documents_recorded = rejects_recorded = 0
    for shard in range(len(documents.shards_of("documents")) if published else 0):
        table = _read_shard(store, documents, "documents", shard, ["doc_id", "source_uri"], "pending_task_types")
        documents_recorded += table.num_rows
        # A document's rows: one per task type it was processed for (null or none pending: all of the run's).
        pending = table["pending_task_types"].combine_chunks()
        every = pc.fill_null(pc.equal(pc.list_value_length(pending), 0), True)
        done = pc.if_else(every, all_types, pending)
        owner = pc.list_parent_indices(done)
        tables.append(rows(DONE, table["doc_id"].take(owner), target, pc.list_flatten(done),
                           pa.nulls(len(owner), pa.string()), table["source_uri"].take(owner)))
    for shard in range(len(documents.shards_of("rejects"))):
        table = _read_shard(store, documents, "rejects", shard, ["source_uri", "stage", "reason"], "ledger_key")
        remembered = table.filter(pc.and_(pc.equal(table["stage"], "extract"),
                                          pc.fill_null(pc.not_equal(table["ledger_key"], ""), False)))
        rejects_recorded += remembered.num_rows
        tables.append(rows(REJECT, remembered["ledger_key"], scope, pa.nulls(remembered.num_rows, pa.string()),
                           remembered["reason"], remembered["source_uri"]))

    result = LedgerUpdate(recorded=documents_recorded, rejects_recorded=rejects_recorded)
    if any(t.num_rows for t in tables):
        result.ledger_part = write_part(store, run, pa.concat_tables(tables), {target: processing_target(config)})
    try:
        result.compaction = compact_ledger(store, run.dag_id, max_parts=compact_after)
    except Exception as err:  # housekeeping: the part is written, the next run compacts
        log.warning("ledger compaction failed (the next run tries again): %s: %s", type(err).__name__, err)
        result.compaction = Compaction(error=f"{type(err).__name__}: {err}")
    log.info("ledger: recorded %d document(s) for target %s and %d reject(s) in %s", documents_recorded,
             target[:12], rejects_recorded, result.ledger_part or "no part (nothing to record)")
    return result


def compact_ledger(store: ArtifactStore, dag_id: str, max_parts: int = COMPACT_AFTER_PARTS) -> Compaction:
    """Replace the live parts by one compacted part, the de-duplicated union of their facts, when
    there are more than `max_parts` (the protocol of parts.py: any crash point leaves a correct ledger)."""
    folder = _parts(store, dag_id)

    def merge(live: list[str]) -> tuple[pa.Table, dict[bytes, bytes]]:
        tables, targets = [], {}
        for key in live:
            table, _, part_targets = _table(folder.read(key))
            tables.append(table)
            targets.update(part_targets)
        return _dedupe(pa.concat_tables(tables)), {TARGETS_KEY: canonical_json(targets).encode()}

    return folder.compact(max_parts, merge)
