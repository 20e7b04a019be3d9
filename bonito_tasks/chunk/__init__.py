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
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
SIGNATURE_PART_ROWS = 16_384  # signatures per part of the stage's chunk_signatures (8 MiB: a bounded buffer)
# Airflow maps at most [core] max_map_length tasks (default 1024): more generate shards cannot run.
MAX_SHARDS = int(os.environ.get("AIRFLOW__CORE__MAX_MAP_LENGTH", "1024"))


class TooManyShards(PermanentFailure):
    """chunk_shard_size makes more generate shards than Airflow can map."""
ENGINE_START_SHARE_INVERSE = 9  # engine start at most 10% of a shard's wall time: generation >= 9x start


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
    Memory: fixed-size arrays per chunk (a 16-byte digest, a keep flag; while the plan is made, the
    sort of the digests), one part, and per duplicate its place; the band keys of the LSH bands go
    to temporary files, read one band at a time, and only the chunks sharing a band key with
    another have their signatures read back. Never the texts (docs/scale.md, "A night's cost as the
    night grows")."""

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
        for _, partition, part, sigs in _parts(store, partitions, ["text", "pending_task_types"],
                                               signatures=plan.near):
            plan.add_part(partition, part, sigs)
        plan.finish(lambda wanted: _parts(store, partitions, ["doc_id", "char_start", "char_end"],
                                          signatures=plan.near, only=wanted))
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
        for index, _, part, sigs in _parts(store, partitions, signatures=plan.near):
            keep = plan.keep_of(index)
            mask = pa.array(keep)
            pending = plan.pending_of(index, part["pending_task_types"].filter(mask))
            part = part.filter(mask).drop_columns(["also_in", "_row", "pending_task_types"])
            part = part.append_column("pending_task_types", pending)
            buffer.append(part.append_column("also_in", plan.also_in_of(index)))
            if sigs is not None:
                buffer_sigs.append(neardup.chunk_signatures_table(part["chunk_id"], sigs[keep], pending))
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


Place = tuple[str, int, int]  # doc_id, char_start, char_end
Parts = Iterator[tuple[int, int, pa.Table, np.ndarray | None]]


class _Dedup:
    """Pass 1 of plan_shards: which chunk keeps each text, in order over the partitions.

    Chunks are numbered in that order (their *row* here). A text is known by the first 16 bytes of
    the sha256 of its UTF-8 (a collision of two of a night's texts has a probability of about
    n**2 / 2**129: none in practice). `add_part` keeps a part's digests, writes its rows' LSH band
    keys to temporary files (one a band) and notes the rows earlier runs covered; `finish` decides,
    all with numpy: the first row of each text stands for it, unless earlier runs generated every
    task type it needs; a chunk that shares a band key with another is verified on its signature
    (read back, with the places of the duplicates, by a second pass over only the parts that hold
    them) and joins the first kept chunk it nearly repeats. Then `keep` flags the kept rows,
    `duplicates[kept row]` lists the other places, `pending[kept row]` narrows its task types to
    those earlier runs have not generated."""

    def __init__(self, config: RunConfig, earlier: neardup.EarlierRuns | None):
        self.config = config
        self.threshold = config.near_dup_threshold
        self.near = self.threshold is not None
        self.earlier = earlier if earlier is not None and len(earlier) else None
        self.bands, self.rows_per_band = minhash.lsh_params(self.threshold) if self.threshold is not None else (0, 0)
        self.band_files = [tempfile.TemporaryFile() for _ in range(self.bands)]
        self.digests: list[np.ndarray] = []  # per part, 16-byte digests
        self.starts = [0]  # part index -> its first row (and, last, the number of rows)
        self.missing: dict[int, list[str]] = {}  # row earlier runs covered -> the task types they did not
        self.keep = np.zeros(0, dtype=bool)
        self.duplicates: dict[int, list[Place]] = {}
        self.pending: dict[int, list[str]] = {}
        self.kept = self.near_duplicates = self.earlier_duplicates = 0

    def add_part(self, partition: int, part: pa.Table, sigs: np.ndarray | None) -> None:
        first = self.starts[-1]
        self.digests.append(_digests(part["text"]))
        self.starts.append(first + part.num_rows)
        if sigs is None:  # near-duplicates are off (no threshold): then there are no earlier runs either
            return
        keys = minhash.band_keys(sigs, self.bands, self.rows_per_band)
        for band, file in enumerate(self.band_files):
            np.ascontiguousarray(keys[:, band]).tofile(file)
        covered = self.earlier.hits(partition, part["_row"].to_numpy()) if self.earlier is not None else {}
        if covered:
            positions = sorted(covered)
            needed = part["pending_task_types"].take(pa.array(positions, pa.int64())).to_pylist()
            for j, pending in zip(positions, needed):
                self.missing[first + j] = [t for t in (pending or self.config.task_types) if t not in covered[j]]

    def finish(self, gather: Callable[[set[int]], Parts]) -> None:
        """Decide (see the class); `gather(part indices)`: those parts' places and signatures."""
        digests = np.concatenate(self.digests) if self.digests else np.zeros(0, dtype="S16")
        self.digests = []
        n = len(digests)
        _, first_index, inverse = np.unique(digests, return_index=True, return_inverse=True)
        del digests
        first_of = first_index[inverse.ravel()]
        del first_index, inverse
        rows = np.arange(n)
        is_first = first_of == rows
        done = np.zeros(n, dtype=bool)  # earlier runs generated every task type it needs
        done[[row for row, missing in self.missing.items() if not missing]] = True
        self.keep = is_first & ~done
        near_rows = self._sharing_a_band_key(self.keep)
        repeats = np.flatnonzero(~is_first)
        places, sigs = self._gather(gather, np.union1d(repeats, near_rows), near_rows)
        rep_of = self._near_duplicates(near_rows, sigs)
        self.keep[list(rep_of)] = False
        self.near_duplicates = len(rep_of)
        # Every other place of a kept text, in row order: its repeats, its near-duplicates and theirs.
        others = np.union1d(repeats, np.fromiter(rep_of, np.int64, len(rep_of)))
        stands_for = first_of[others]
        gone = done[stands_for]
        self.earlier_duplicates = int(np.count_nonzero(done & is_first) + np.count_nonzero(gone))
        for row, first in zip(others[~gone].tolist(), stands_for[~gone].tolist()):
            self.duplicates.setdefault(rep_of.get(first, first), []).append(places[row])
        self.pending = {row: missing for row, missing in self.missing.items() if missing and self.keep[row]}
        self.kept = int(np.count_nonzero(self.keep))
        for file in self.band_files:
            file.close()

    def _sharing_a_band_key(self, eligible: np.ndarray) -> np.ndarray:
        """The rows among `eligible` that share a band key with another of them, one band at a time."""
        rows = np.flatnonzero(eligible)
        sharing = np.zeros(len(rows), dtype=bool)
        for file in self.band_files:
            file.seek(0)
            keys = np.fromfile(file, dtype=np.uint64)[rows]
            ordered = np.sort(keys)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if len(repeated):
                sharing |= np.isin(keys, repeated)
        return rows[sharing]

    def _gather(self, gather: Callable[[set[int]], Parts], wanted: np.ndarray,
                near_rows: np.ndarray) -> tuple[dict[int, Place], np.ndarray]:
        """The places of the rows `wanted`, and the signatures of `near_rows` (in their order)."""
        places: dict[int, Place] = {}
        sigs = np.zeros((len(near_rows), minhash.NUM_PERM), dtype=np.uint32)
        starts = np.asarray(self.starts)
        parts = set((np.searchsorted(starts, wanted, side="right") - 1).tolist())
        for index, _, part, part_sigs in gather(parts) if parts else ():
            first, last = self.starts[index], self.starts[index + 1]
            local = wanted[(wanted >= first) & (wanted < last)]
            columns = [part[c].take(pa.array(local - first)).to_pylist() for c in ("doc_id", "char_start", "char_end")]
            places.update(zip(local.tolist(), zip(*columns)))
            if part_sigs is not None:
                at = np.flatnonzero((near_rows >= first) & (near_rows < last))
                sigs[at] = part_sigs[near_rows[at] - first]
        return places, sigs

    def _near_duplicates(self, rows: np.ndarray, sigs: np.ndarray) -> dict[int, int]:
        """Near-duplicate row -> the first kept row it nearly repeats, among `rows` (in order), in
        batches of PART_ROWS: each checked against the earlier batches' kept rows (the index),
        then against this batch's."""
        if self.threshold is None or not len(rows):
            return {}
        index = minhash.NearDupIndex(self.threshold)
        kept_rows: list[int] = []  # index id -> row
        rep_of: dict[int, int] = {}
        for start in range(0, len(rows), PART_ROWS):
            batch, batch_sigs = rows[start:start + PART_ROWS].tolist(), sigs[start:start + PART_ROWS]
            earlier_rep = index.first_match(batch_sigs) if len(index) else np.full(len(batch), -1)
            keys = minhash.band_keys(batch_sigs, index.bands, index.rows)
            # Rows sharing a band key with an earlier row of this batch: only they can nearly repeat one.
            maybe_local = _repeats_an_earlier_key(keys)
            position = np.full(len(batch), -1, dtype=np.int64)  # row -> its place among this batch's kept rows
            added: list[int] = []
            for j, row in enumerate(batch):
                rep = int(earlier_rep[j])
                if rep < 0 and maybe_local[j]:
                    rep = self._local_match(index, batch_sigs, keys, j, position)
                if rep >= 0:
                    rep_of[row] = kept_rows[rep]
                    continue
                position[j] = len(added)
                added.append(j)
                kept_rows.append(row)
            if added:
                index.add(batch_sigs[added])
        return rep_of

    def keep_of(self, index: int) -> np.ndarray:
        return self.keep[self.starts[index]:self.starts[index + 1]]

    def pending_of(self, index: int, pending: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
        """The kept rows' pending task types (`pending`, their documents'), narrowed where earlier runs covered them."""
        kept = np.flatnonzero(self.keep[self.starts[index]:self.starts[index + 1]]) + self.starts[index]
        narrowed = [(j, self.pending[row]) for j, row in enumerate(kept.tolist()) if row in self.pending] \
            if self.pending else []
        if not narrowed:
            return pending
        which = np.full(len(kept), -1)
        which[[j for j, _ in narrowed]] = np.arange(len(narrowed))
        values = pa.array([m for _, m in narrowed], CHUNKS.field("pending_task_types").type)
        return pc.if_else(pa.array(which >= 0), values.take(pa.array(np.maximum(which, 0))), pending)

    def also_in_of(self, index: int) -> pa.Array:
        """The kept rows' other places (CHUNKS' also_in)."""
        kept = np.flatnonzero(self.keep[self.starts[index]:self.starts[index + 1]]) + self.starts[index]
        counts = np.zeros(len(kept), dtype=np.int32)
        places: list[Place] = []
        if self.duplicates:
            for j, row in enumerate(kept.tolist()):
                if row in self.duplicates:
                    counts[j] = len(self.duplicates[row])
                    places += self.duplicates[row]
        offsets = np.zeros(len(kept) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        doc_ids, starts, ends = (list(c) for c in zip(*places)) if places else ([], [], [])
        values = pa.StructArray.from_arrays([pa.array(doc_ids, pa.string()), pa.array(starts, pa.int64()),
                                             pa.array(ends, pa.int64())], names=["doc_id", "char_start", "char_end"])
        return pa.ListArray.from_arrays(pa.array(offsets), values, type=CHUNKS.field("also_in").type)

    def _local_match(self, index: minhash.NearDupIndex, sigs: np.ndarray, keys: np.ndarray, j: int,
                     position: np.ndarray) -> int:
        """The index id the first kept row of this batch that row j nearly repeats will get, or -1."""
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
           signatures: bool = False, only: set[int] | None = None) -> Parts:
    """(part index, partition, chunks part, its rows' signatures or None) over every partition in
    order (`only`: those parts); a part's `_row` numbers its rows within the partition."""
    index = 0
    for partition, manifest in enumerate(partitions):
        offset = 0
        for i, ref in enumerate(manifest.shards_of("chunks")):
            if only is None or index in only:
                table = store.read_shard(manifest, "chunks", i, columns)
                sigs = neardup.read_signatures(store, manifest, i) if signatures else None
                rows = pa.array(np.arange(offset, offset + ref.rows, dtype=np.int64))
                yield index, partition, table.append_column("_row", rows), sigs
            offset += ref.rows
            index += 1


def _digests(texts: pa.ChunkedArray) -> np.ndarray:
    """The first 16 bytes of the sha256 of each text's UTF-8 (`S16`), hashed from Arrow's buffers."""
    out = []
    for chunk in texts.cast(pa.large_string()).chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = memoryview(chunk.buffers()[2] or b"")
        out.append(b"".join(hashlib.sha256(data[a:b]).digest()[:16]
                            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())))
    return np.frombuffer(b"".join(out), dtype="S16")
