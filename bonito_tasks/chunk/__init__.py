"""Chunk stage: documents -> chunks of at most N model tokens, cut at paragraph and sentence ends.

One task per extract partition (`chunk_partition`) splits its documents, drops chunks under
`chunk_min_chars` and those failing the quality filters (quality.py; counted by reason), and
writes each chunk's MinHash signature beside it; `plan_shards` then reads the partitions in order,
keeps the first chunk of each distinct text and of each group of near-duplicates (the others'
places go into its `also_in`), drops chunks an earlier run already generated from (neardup.py),
and writes the chunks in parts that make up the generate shards (auto-sized unless
`chunk_shard_size` is set). One partition and N partitions give the same chunks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from bisect import bisect_right
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from bonito_tasks import minhash
from bonito_tasks.checks import check_chunks
from bonito_tasks.chunk import neardup, quality
from bonito_tasks.chunk.splitter import Chunker, load_tokenizer
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    CHUNKS,
    ChunkMetrics,
    ExtractMetrics,
    GenerateFigures,
    Manifest,
    RunRef,
    StageName,
    sha256_hex,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.figures import read_figures
from bonito_tasks.stage import Stage, StageWriter, partition_view
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

PART_ROWS = 2048  # chunks per part: a generate shard is a run of parts, read one at a time
SIGNATURE_PART_ROWS = 65_536  # signatures per part of the stage's chunk_signatures (32 MiB)
# Airflow maps at most [core] max_map_length tasks (default 1024): more generate shards cannot run.
MAX_SHARDS = int(os.environ.get("AIRFLOW__CORE__MAX_MAP_LENGTH", "1024"))


class TooManyShards(PermanentFailure):
    """chunk_shard_size makes more generate shards than Airflow can map."""
ENGINE_START_SHARE_INVERSE = 9  # engine start at most 10% of a shard's wall time: generation >= 9x start


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def _page(page_starts: list[int] | None, char_start: int) -> int | None:
    return bisect_right(page_starts, char_start) if page_starts else None


# How chunks are cut and filtered (chunk_max_tokens is derived from the sampling budget by RunConfig).
CHUNKING_FIELDS = frozenset({"model_id", "model_revision", "chunk_max_tokens", "chunk_overlap_tokens",
                             "chunk_min_chars", "quality_filters"}
                            | {name for name in RunConfig.model_fields if name.startswith("quality_")})
# Which chunks earlier runs generated from, for the same processing target (ledger.processing_target).
EARLIER_RUN_FIELDS = frozenset({"near_dup_threshold", "near_dup_across_runs", "task_types", "full_refresh",
                                "model_id", "model_revision", "hub_repo_id", "export_s3_uri"})
# How the chunks are cut into generate shards.
SHARDING_FIELDS = frozenset({"chunk_shard_size", "gpu_slots", "target_shard_minutes", "task_types", "n", "backend",
                             "tensor_parallel_size"})


class ChunkPartition(Stage):
    """Chunk the documents of one extract partition (`chunk/shard-NNNNN/`), skipping those whose
    content an earlier partition holds. Memory: one documents part and one chunks part."""

    name = StageName.CHUNK
    reads = (StageName.EXTRACT,)
    config_fields = CHUNKING_FIELDS

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest, partition: int):
        super().__init__(store, run, config, [documents], partition=partition)
        self.documents = documents
        self.extracted = partition_view(documents, partition)

    def work(self, writer: StageWriter) -> ChunkMetrics:
        config, store, partition = self.config, self.store, self.partition
        assert partition is not None
        assert config.chunk_max_tokens is not None  # RunConfig fills it in from the token budget
        skip = _duplicate_documents(store, self.documents, partition)
        chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens, config.chunk_overlap_tokens)
        metrics = ChunkMetrics(chunk_max_tokens=config.chunk_max_tokens,
                               chunk_overlap_tokens=config.chunk_overlap_tokens, chunk_min_chars=config.chunk_min_chars)
        thresholds = quality.Thresholds.from_config(config) if config.quality_filters else None
        filtered = _Filtered(writer, metrics, thresholds)
        for shard in range(len(self.extracted.shards_of("documents"))):
            docs = store.read_shard(self.extracted, "documents", shard,
                                    columns=["doc_id", "text", "page_starts", "pending_task_types"])
            todo = [row for row in zip(*(docs[c].to_pylist() for c in docs.column_names)) if row[0] not in skip]
            # Many documents per tokenizer call (batches parallelize); each document's spans as soon as it is done.
            for (doc_id, text, page_starts, pending), spans in zip(todo, chunker.iter_split(r[1] for r in todo)):
                metrics.documents += 1
                kept = [s for s in spans if len(text[s[0]:s[1]].strip()) >= config.chunk_min_chars]
                metrics.short_chunks += len(spans) - len(kept)
                for start, end, tokens in kept:
                    filtered.append({"chunk_id": sha256_hex(f"{doc_id}:{start}:{end}"), "doc_id": doc_id,
                                     "chunk_index": 0, "char_start": start, "char_end": end, "n_tokens": tokens,
                                     "text": text[start:end], "page": _page(page_starts, start),
                                     "pending_task_types": pending, "also_in": []})
        filtered.flush()
        log.info("chunk partition %d: %d document(s) into %d chunk(s), %d under %d chars dropped, %d failed the "
                 "quality filters %s", partition, metrics.documents, metrics.chunks, metrics.short_chunks,
                 config.chunk_min_chars, sum(metrics.filtered.values()), metrics.filtered or "")
        return metrics

    def check(self, writer: StageWriter) -> None:
        check_chunks(self.store, writer, self.extracted)


class _Filtered:
    """Chunks buffered a part at a time: filtered, numbered per document and written with their signatures."""

    def __init__(self, writer: StageWriter, metrics: ChunkMetrics, thresholds: quality.Thresholds | None):
        self.writer, self.metrics, self.thresholds = writer, metrics, thresholds
        self.rows: list[dict] = []
        self.next_index: dict[str, int] = {}  # the document being chunked -> index of its next kept chunk

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= PART_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        rows, metrics = self.rows, self.metrics
        texts = [r["text"] for r in rows]
        shingled = minhash.shingles(texts)
        reasons = quality.assess(texts, self.thresholds, shingled) if self.thresholds else [None] * len(rows)
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        for reason in reasons:
            if reason is not None:
                metrics.filtered[reason] = metrics.filtered.get(reason, 0) + 1
        kept = [rows[i] for i in keep]
        for row in kept:
            if row["doc_id"] not in self.next_index:
                self.next_index.clear()
                self.next_index[row["doc_id"]] = 0
            row["chunk_index"] = self.next_index[row["doc_id"]]
            self.next_index[row["doc_id"]] += 1
        if kept:
            self.writer.add("chunks", pa.Table.from_pylist(kept, CHUNKS))
            sigs = minhash.signatures(shingled.take(keep))
            self.writer.add("chunk_signatures", neardup.chunk_signatures_table(
                [r["chunk_id"] for r in kept], sigs, [r["pending_task_types"] for r in kept]))
            metrics.chunks += len(kept)
        self.rows = []


class PlanShards(Stage):
    """The chunk stage: the partitions' chunks in order, exact duplicates and near-duplicates kept
    once (with every other place in `also_in`: a near-duplicate goes to the first kept chunk it
    matches), chunks an earlier run generated from dropped (or narrowed to the task types still
    missing), in parts of at most PART_ROWS that make up the generate shards.
    Memory: the digests and places of the distinct chunks (Python dicts), the kept chunks' MinHash
    signatures and band keys (about 720 bytes each) and one part; never the texts. It grows with
    the night's chunks (docs/scale.md, "A night's cost as the night grows")."""

    name = StageName.CHUNK
    reads = (StageName.CHUNK,)
    config_fields = CHUNKING_FIELDS | EARLIER_RUN_FIELDS | SHARDING_FIELDS

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, partitions: list[Manifest]):
        super().__init__(store, run, config, partitions)

    def work(self, writer: StageWriter) -> ChunkMetrics:
        config, store, partitions = self.config, self.store, self.inputs
        tonight = ((partition, neardup.read_signatures(store, manifest, i))
                   for partition, manifest in enumerate(partitions) for i in range(len(manifest.shards_of("chunks"))))
        plan = _Dedup(config, neardup.load_earlier(store, self.run.dag_id, config, tonight))
        columns = ["doc_id", "char_start", "char_end", "text", "pending_task_types"]
        for partition, part, sigs in _parts(store, partitions, columns, signatures=plan.near):
            plan.add_part(partition, part, sigs)
        kept = plan.kept
        shard_size = generate_shard_size(kept, config, read_figures(store, self.run, config))
        part_rows = min(shard_size, PART_ROWS)
        parts_per_shard = math.ceil(shard_size / part_rows)
        assert config.chunk_max_tokens is not None  # RunConfig fills it in from the token budget
        metrics = ChunkMetrics(partitions=len(partitions), chunk_max_tokens=config.chunk_max_tokens,
                               chunk_overlap_tokens=config.chunk_overlap_tokens, chunk_min_chars=config.chunk_min_chars)
        buffer: list[pa.Table] = []
        buffer_sigs: list[pa.Table] = []
        buffered = 0
        for partition, part, sigs in _parts(store, partitions, signatures=plan.near):
            digests = [_digest(t) for t in part["text"].to_pylist()]
            places = [(partition, row) for row in part["_row"].to_pylist()]
            keep = [plan.first[d] == place for d, place in zip(digests, places)]
            pending = [plan.pending.get(place, p) for place, p, k in
                       zip(places, part["pending_task_types"].to_pylist(), keep) if k]
            also_in = [plan.duplicates.get(d, []) for d, k in zip(digests, keep) if k]
            mask = pa.array(keep)
            part = part.filter(mask).drop_columns(["also_in", "_row", "pending_task_types"])
            part = part.append_column("pending_task_types", pa.array(pending, CHUNKS.field("pending_task_types").type))
            buffer.append(part.append_column("also_in", pa.array(also_in, CHUNKS.field("also_in").type)))
            if sigs is not None:
                buffer_sigs.append(neardup.chunk_signatures_table(
                    part["chunk_id"].to_pylist(), sigs[np.asarray(keep, dtype=bool)], pending))
                if sum(t.num_rows for t in buffer_sigs) >= SIGNATURE_PART_ROWS:
                    writer.add("chunk_signatures", pa.concat_tables(buffer_sigs))
                    buffer_sigs = []
            buffered += part.num_rows
            while buffered >= part_rows:
                table = pa.concat_tables(buffer)
                writer.add("chunks", table.slice(0, part_rows))
                buffer, buffered = [table.slice(part_rows)], buffered - part_rows
        if buffered:
            writer.add("chunks", pa.concat_tables(buffer))
        if buffer_sigs:  # for the ledger task, which records them once publish succeeded
            writer.add("chunk_signatures", pa.concat_tables(buffer_sigs))
        n_parts = sum(1 for ref in writer.shards if ref.table == "chunks")
        metrics.shard_parts = list(range(0, n_parts, parts_per_shard))
        if len(metrics.shard_parts) > MAX_SHARDS:
            raise TooManyShards(
                f"chunk_shard_size={shard_size} makes {len(metrics.shard_parts)} generate shards for {kept} chunks; "
                f"Airflow maps at most {MAX_SHARDS} ([core] max_map_length). Raise chunk_shard_size to at least "
                f"{math.ceil(kept / MAX_SHARDS)}, leave it empty (auto), or raise AIRFLOW__CORE__MAX_MAP_LENGTH.")
        metrics.shards, metrics.shard_size, metrics.chunks = len(metrics.shard_parts), shard_size, kept
        for manifest in partitions:
            assert isinstance(manifest.metrics, ChunkMetrics)
            metrics.documents += manifest.metrics.documents
            metrics.short_chunks += manifest.metrics.short_chunks
            for reason, count in manifest.metrics.filtered.items():
                metrics.filtered[reason] = metrics.filtered.get(reason, 0) + count
        metrics.filtered = {r: metrics.filtered[r] for r in quality.REASONS if r in metrics.filtered}
        metrics.duplicate_chunks = sum(len(v) for v in plan.duplicates.values())
        metrics.near_duplicate_chunks = plan.near_duplicates
        metrics.earlier_run_duplicates = plan.earlier_duplicates
        log.info("chunked %d documents into %d chunks in %d generate shard(s) of up to %d; dropped %d duplicate(s) "
                 "(%d near), %d chunk(s) an earlier run generated from, %d chunk(s) under %d chars and %d failing the "
                 "quality filters %s", metrics.documents, kept, metrics.shards, shard_size, metrics.duplicate_chunks,
                 metrics.near_duplicate_chunks, metrics.earlier_run_duplicates, metrics.short_chunks,
                 config.chunk_min_chars, sum(metrics.filtered.values()), metrics.filtered or "")
        return metrics


def chunk_partition(
    store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest, partition: int
) -> Manifest:
    return ChunkPartition(store, run, config, documents, partition).execute()


def plan_shards(store: ArtifactStore, run: RunRef, config: RunConfig, partitions: list[Manifest]) -> Manifest:
    return PlanShards(store, run, config, partitions).execute()


EARLIER = (-1, -1)  # first[digest] of a text dropped because an earlier run generated from it


class _Dedup:
    """Pass 1 of plan_shards: which place keeps each text, in order over the partitions.

    `first[digest]` is the (partition, row) of the chunk that stands for the text (EARLIER: none,
    an earlier run did); `duplicates[digest of a kept chunk]` lists the other places; `pending`
    narrows a kept chunk's task types to those earlier runs have not generated."""

    def __init__(self, config: RunConfig, earlier: neardup.EarlierRuns | None):
        self.config = config
        threshold = config.near_dup_threshold
        self.near = threshold is not None
        self.index = minhash.NearDupIndex(threshold) if threshold is not None else None
        self.earlier = earlier if earlier is not None and len(earlier) else None
        self.first: dict[bytes, tuple[int, int]] = {}
        self.duplicates: dict[bytes, list[dict]] = {}
        self.rep_of: dict[bytes, bytes] = {}  # near-duplicate's digest -> digest of the kept chunk it joined
        self.kept_digests: list[bytes] = []  # index id -> digest of that kept chunk
        self.pending: dict[tuple[int, int], list[str]] = {}
        self.kept = self.near_duplicates = self.earlier_duplicates = 0

    def add_part(self, partition: int, part: pa.Table, sigs: np.ndarray | None) -> None:
        columns = (part[c].to_pylist() for c in ("doc_id", "char_start", "char_end", "text", "pending_task_types",
                                                  "_row"))
        # `sigs` is None exactly when near-duplicates are off (no threshold): then there is no index
        # and no earlier runs either.
        index = self.index if sigs is not None else None
        earlier = self.earlier if sigs is not None else None
        earlier_rep = index.first_match(sigs) if index is not None and sigs is not None and len(index) else None
        covered = earlier.covered(partition, part["_row"].to_numpy()) if earlier is not None else None
        keys = minhash.band_keys(sigs, index.bands, index.rows) if index is not None and sigs is not None else None
        # Rows sharing a band key with an earlier row of this part: only they can nearly repeat one.
        maybe_local = _repeats_an_earlier_key(keys) if keys is not None else None
        position = np.full(part.num_rows, -1, dtype=np.int64)  # row -> its place among this part's kept rows
        kept_rows: list[int] = []
        for j, (doc_id, start, end, text, pending, row) in enumerate(zip(*columns)):
            digest = _digest(text)
            place = (doc_id, start, end)
            if digest in self.first:
                if self.first[digest] == EARLIER:
                    self.earlier_duplicates += 1
                else:
                    self._also_in(self.rep_of.get(digest, digest), place)
                continue
            if covered is not None and covered[j]:
                missing = [t for t in (pending or self.config.task_types) if t not in covered[j]]
                if not missing:
                    self.first[digest] = EARLIER
                    self.earlier_duplicates += 1
                    continue
                self.pending[(partition, row)] = missing
            rep = -1
            if index is not None:
                rep = int(earlier_rep[j]) if earlier_rep is not None else -1
                if rep < 0 and sigs is not None and keys is not None and maybe_local is not None and maybe_local[j]:
                    rep = self._local_match(index, sigs, keys, j, position)
            if rep >= 0:
                kept_digest = self.kept_digests[rep]
                self.first[digest] = self.first[kept_digest]
                self.rep_of[digest] = kept_digest
                self._also_in(kept_digest, place)
                self.pending.pop((partition, row), None)
                self.near_duplicates += 1
                continue
            self.first[digest] = (partition, row)
            self.kept += 1
            if index is not None:
                position[j] = len(kept_rows)
                kept_rows.append(j)
                self.kept_digests.append(digest)
        if index is not None and sigs is not None and kept_rows:
            index.add(sigs[kept_rows])

    def _also_in(self, kept_digest: bytes, place: tuple[str, int, int]) -> None:
        doc_id, start, end = place
        self.duplicates.setdefault(kept_digest, []).append({"doc_id": doc_id, "char_start": start, "char_end": end})

    def _local_match(self, index: minhash.NearDupIndex, sigs: np.ndarray, keys: np.ndarray, j: int,
                     position: np.ndarray) -> int:
        """The index id the first kept row of this part that row j nearly repeats will get, or -1."""
        earlier = np.flatnonzero((keys[:j] == keys[j]).any(axis=1))
        candidates = earlier[position[earlier] >= 0]
        if not len(candidates):
            return -1
        similar = minhash.similarities(np.repeat(sigs[j:j + 1], len(candidates), axis=0),
                                       sigs[candidates]) >= index.threshold
        hits = candidates[similar]
        return len(index) + int(position[hits[0]]) if len(hits) else -1


def _repeats_an_earlier_key(keys: np.ndarray) -> np.ndarray:
    """Per row of `keys` (rows x bands): whether an earlier row has the same key in some band."""
    rows = np.arange(len(keys))
    repeats = np.zeros(len(keys), dtype=bool)
    for band in keys.T:
        _, first, inverse = np.unique(band, return_index=True, return_inverse=True)
        repeats |= first[inverse] < rows
    return repeats


def chunk(store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest) -> Manifest:
    """Every partition in turn, then plan_shards: the whole stage in one process."""
    count = max(1, documents.metrics_as(ExtractMetrics).partitions)
    partitions = [chunk_partition(store, run, config, documents, p) for p in range(count)]
    return plan_shards(store, run, config, partitions)


def generate_shard_size(chunks: int, config: RunConfig, figures: GenerateFigures | None) -> int:
    """Chunks per generate shard. Set: `chunk_shard_size`. Auto: with the last run's figures on this
    model, shards of about `target_shard_minutes`, at least `gpu_slots` of them, but none so short
    that engine start exceeds 10% of its wall time; without figures, one shard per GPU slot."""
    if config.chunk_shard_size:
        return config.chunk_shard_size
    if chunks == 0:
        return PART_ROWS
    shards = config.gpu_slots
    if figures is not None and figures.engine_start_s > 0 and figures.seconds_per_generation > 0:
        seconds = chunks * len(config.task_types) * config.n * figures.seconds_per_generation
        by_target = math.ceil(seconds / (config.target_shard_minutes * 60))
        longest_allowed = max(1, math.floor(seconds / (ENGINE_START_SHARE_INVERSE * figures.engine_start_s)))
        shards = min(max(by_target, config.gpu_slots), longest_allowed)
    shards = max(1, min(shards, MAX_SHARDS, chunks))
    return math.ceil(chunks / shards)


def _duplicate_documents(store: ArtifactStore, documents: Manifest, partition: int) -> set[str]:
    skip: set[str] = set()
    for i in range(len(documents.shards_of("duplicate_documents"))):
        table = store.read_shard(documents, "duplicate_documents", i)
        skip.update(d for d, p in zip(table["doc_id"].to_pylist(), table["partition"].to_pylist()) if p == partition)
    return skip


def _parts(store: ArtifactStore, partitions: list[Manifest], columns: list[str] | None = None, *,
           signatures: bool = False) -> Iterator[tuple[int, pa.Table, np.ndarray | None]]:
    """(partition, chunks part, its rows' signatures or None) over every partition in order; rows
    are numbered per partition."""
    for partition, manifest in enumerate(partitions):
        offset = 0
        for i in range(len(manifest.shards_of("chunks"))):
            table = store.read_shard(manifest, "chunks", i, columns)
            sigs = neardup.read_signatures(store, manifest, i) if signatures else None
            yield (partition, table.append_column("_row", pa.array(range(offset, offset + table.num_rows), pa.int64())),
                   sigs)
            offset += table.num_rows
