"""Chunk stage: documents -> chunks of at most N model tokens, cut at paragraph and sentence ends.

One task per extract partition (`chunk_partition`) splits its documents; `plan_shards` then
reads the partitions in order, keeps the first chunk of each distinct text (the others' places
go into its `also_in`), drops chunks under `chunk_min_chars` and writes the chunks in parts that
make up the generate shards (auto-sized unless `chunk_shard_size` is set). One partition and N
partitions give the same chunks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Iterator

import pyarrow as pa

from bonito_tasks.checks import check_chunks
from bonito_tasks.chunk.splitter import Chunker, load_tokenizer
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CHUNKS, ChunkMetrics, GenerateFigures, Manifest, RunRef, sha256_hex
from bonito_tasks.figures import read_figures
from bonito_tasks.stage import StageWriter, partition_view, run_stage
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "chunk"
PART_ROWS = 2048  # chunks per part: a generate shard is a run of parts, read one at a time
MAX_SHARDS = 1024  # Airflow's default max_map_length
ENGINE_START_SHARE_INVERSE = 9  # engine start at most 10% of a shard's wall time: generation >= 9x start


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def _page(page_starts: list[int] | None, char_start: int) -> int | None:
    return bisect_right(page_starts, char_start) if page_starts else None


def chunk_partition(
    store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest, partition: int
) -> Manifest:
    """Chunk the documents of one extract partition (`chunk/shard-NNNNN/`), skipping those whose
    content an earlier partition holds. Memory: one documents part and one chunks part."""
    extracted = partition_view(documents, partition)

    def work(writer: StageWriter) -> ChunkMetrics:
        started = time.monotonic()
        skip = _duplicate_documents(store, documents, partition)
        chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens, config.chunk_overlap_tokens)
        metrics = ChunkMetrics(chunk_max_tokens=config.chunk_max_tokens,
                               chunk_overlap_tokens=config.chunk_overlap_tokens, chunk_min_chars=config.chunk_min_chars)
        rows: list[dict] = []
        for shard in range(len(extracted.shards_of("documents"))):
            docs = store.read_shard(extracted, "documents", shard,
                                    columns=["doc_id", "text", "page_starts", "pending_task_types"])
            for doc_id, text, page_starts, pending in zip(*(docs[c].to_pylist() for c in docs.column_names)):
                if doc_id in skip:
                    continue
                metrics.documents += 1
                spans = chunker.split_counted(text)
                kept = [s for s in spans if len(text[s[0]:s[1]].strip()) >= config.chunk_min_chars]
                metrics.short_chunks += len(spans) - len(kept)
                for index, (start, end, tokens) in enumerate(kept):
                    rows.append({"chunk_id": sha256_hex(f"{doc_id}:{start}:{end}"), "doc_id": doc_id,
                                 "chunk_index": index, "char_start": start, "char_end": end, "n_tokens": tokens,
                                 "text": text[start:end], "page": _page(page_starts, start),
                                 "pending_task_types": pending, "also_in": []})
                    if len(rows) >= PART_ROWS:
                        writer.add("chunks", pa.Table.from_pylist(rows, CHUNKS))
                        metrics.chunks, rows = metrics.chunks + len(rows), []
        if rows:
            writer.add("chunks", pa.Table.from_pylist(rows, CHUNKS))
            metrics.chunks += len(rows)
        metrics.wall_s = round(time.monotonic() - started, 3)
        log.info("chunk partition %d: %d document(s) into %d chunk(s), %d under %d chars dropped, in %.1f s",
                 partition, metrics.documents, metrics.chunks, metrics.short_chunks, config.chunk_min_chars,
                 metrics.wall_s)
        return metrics

    return run_stage(store, run, STAGE, config_sha256=config.sha256(), inputs=[documents], work=work,
                     check=lambda writer: check_chunks(store, writer, extracted), partition=partition)


def plan_shards(store: ArtifactStore, run: RunRef, config: RunConfig, partitions: list[Manifest]) -> Manifest:
    """The chunk stage: the partitions' chunks in order, exact duplicates kept once (with every
    other place in `also_in`), in parts of at most PART_ROWS that make up the generate shards.
    Memory: the 128-bit digests of the distinct chunks (about 80 bytes each) and one part."""

    def work(writer: StageWriter) -> ChunkMetrics:
        started = time.monotonic()
        first: dict[bytes, tuple[int, int]] = {}  # digest -> (partition, row) of the copy kept
        duplicates: dict[bytes, list[dict]] = {}  # digest -> the other places with the same text
        for partition, part in _parts(store, partitions, ["doc_id", "char_start", "char_end", "text"]):
            for doc_id, start, end, text, row in zip(*(part[c].to_pylist() for c in part.column_names)):
                digest = _digest(text)
                if digest in first:
                    duplicates.setdefault(digest, []).append({"doc_id": doc_id, "char_start": start, "char_end": end})
                else:
                    first[digest] = (partition, row)
        kept = len(first)
        shard_size = generate_shard_size(kept, config, read_figures(store, run.dag_id, config))
        part_rows = min(shard_size, PART_ROWS)
        parts_per_shard = math.ceil(shard_size / part_rows)
        metrics = ChunkMetrics(partitions=len(partitions), chunk_max_tokens=config.chunk_max_tokens,
                               chunk_overlap_tokens=config.chunk_overlap_tokens, chunk_min_chars=config.chunk_min_chars)
        buffer: list[pa.Table] = []
        buffered = 0
        for partition, part in _parts(store, partitions):
            digests = [_digest(t) for t in part["text"].to_pylist()]
            keep = [first[d] == (partition, row) for d, row in zip(digests, part["_row"].to_pylist())]
            part = part.filter(pa.array(keep)).drop_columns(["also_in", "_row"])
            also_in = [duplicates.get(d, []) for d, k in zip(digests, keep) if k]
            buffer.append(part.append_column("also_in", pa.array(also_in, CHUNKS.field("also_in").type)))
            buffered += part.num_rows
            while buffered >= part_rows:
                table = pa.concat_tables(buffer)
                writer.add("chunks", table.slice(0, part_rows))
                buffer, buffered = [table.slice(part_rows)], buffered - part_rows
        if buffered:
            writer.add("chunks", pa.concat_tables(buffer))
        n_parts = len(writer.shards)
        metrics.shard_parts = list(range(0, n_parts, parts_per_shard))
        metrics.shards, metrics.shard_size, metrics.chunks = len(metrics.shard_parts), shard_size, kept
        for manifest in partitions:
            metrics.documents += manifest.metrics.documents
            metrics.short_chunks += manifest.metrics.short_chunks
        metrics.duplicate_chunks = sum(len(v) for v in duplicates.values())
        metrics.wall_s = round(time.monotonic() - started, 3)
        log.info("chunked %d documents into %d chunks in %d generate shard(s) of up to %d; dropped %d exact "
                 "duplicate(s) and %d chunk(s) under %d chars", metrics.documents, kept, metrics.shards, shard_size,
                 metrics.duplicate_chunks, metrics.short_chunks, config.chunk_min_chars)
        return metrics

    return run_stage(store, run, STAGE, config_sha256=config.sha256(), inputs=partitions, work=work)


def chunk(store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest) -> Manifest:
    """Every partition in turn, then plan_shards: the whole stage in one process."""
    count = max(1, documents.metrics.partitions)
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


def _parts(store: ArtifactStore, partitions: list[Manifest], columns: list[str] | None = None
           ) -> Iterator[tuple[int, pa.Table]]:
    """(partition, chunks part) over every partition in order; rows are numbered per partition."""
    for partition, manifest in enumerate(partitions):
        offset = 0
        for i in range(len(manifest.shards_of("chunks"))):
            table = store.read_shard(manifest, "chunks", i, columns)
            yield partition, table.append_column("_row", pa.array(range(offset, offset + table.num_rows), pa.int64()))
            offset += table.num_rows
