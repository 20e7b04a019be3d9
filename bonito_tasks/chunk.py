"""Chunk stage: documents -> chunks of at most N model tokens, cut at paragraph and sentence ends.

Chunks under `chunk_min_chars` are dropped; exact-duplicate chunks across the corpus are kept
once, with every other place they occur in `also_in`. Chunks are written in shards of
`chunk_shard_size`; generate is mapped over the shards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bonito_tasks.checks import check_chunks
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CHUNKS, ChunkMetrics, Manifest, RunRef, sha256_hex
from bonito_tasks.stage import StageWriter, run_stage
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

COUNT_BATCH = 256  # texts per tokenizer call
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")


def load_tokenizer(config: RunConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.model_id, revision=config.model_revision)


def _spans(text: str, pattern: re.Pattern, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Non-blank [start, end) pieces of text[start:end] cut after each separator match."""
    cursor = start
    for match in pattern.finditer(text, start, end):
        if text[cursor:match.start()].strip():
            yield cursor, match.start()
        cursor = match.end()
    if text[cursor:end].strip():
        yield cursor, end


class Chunker:
    def __init__(self, tokenizer: Any, max_tokens: int, overlap_tokens: int = 0):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    def count(self, texts: list[str]) -> list[int]:
        counts = []
        for first in range(0, len(texts), COUNT_BATCH):  # batches: encodings of a whole book are large
            ids = self.tokenizer(texts[first:first + COUNT_BATCH], add_special_tokens=False,
                                 return_attention_mask=False)["input_ids"]
            counts += map(len, ids)
        return counts

    def _units(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, tokens) pieces no longer than max_tokens: whole paragraphs when they fit,
        else sentences, else token windows of an over-long sentence."""
        paragraphs = list(_spans(text, PARAGRAPH_BREAK, 0, len(text)))
        units = []
        for (p_start, p_end), p_tokens in zip(paragraphs, self.count([text[a:b] for a, b in paragraphs])):
            if p_tokens <= self.max_tokens:
                units.append((p_start, p_end, p_tokens))
                continue
            sentences = list(_spans(text, SENTENCE_END, p_start, p_end))
            for (s_start, s_end), s_tokens in zip(sentences, self.count([text[a:b] for a, b in sentences])):
                if s_tokens <= self.max_tokens:
                    units.append((s_start, s_end, s_tokens))
                else:
                    units.extend(self._token_windows(text, s_start, s_end))
        return units

    def _token_windows(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        encoded = self.tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        step = self.max_tokens - 2  # margin: re-tokenizing a cut piece can add a token at each edge
        windows = []
        for first in range(0, len(offsets), step):
            last = min(first + step, len(offsets)) - 1
            windows.append((start + offsets[first][0], start + offsets[last][1], last - first + 1))
        return windows

    def _overlap(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """The trailing whole sentences of text[start:end] (not all of it) within overlap_tokens."""
        sentences = list(_spans(text, SENTENCE_END, start, end))[1:]
        carry: list[tuple[int, int, int]] = []
        for s_start, _ in reversed(sentences):
            tokens = self.count([text[s_start:end]])[0]
            if tokens > self.overlap_tokens:
                break
            carry = [(s_start, end, tokens)]
        return carry

    def split(self, text: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b, _ in self.split_counted(text)]

    def split_counted(self, text: str) -> list[tuple[int, int, int]]:
        """[start, end) spans of text with their tokens, each at most max_tokens when tokenized on
        its own. With overlap_tokens, a span starts with the last whole sentences of the one before."""
        spans: list[tuple[int, int]] = []
        current: list[tuple[int, int, int]] = []
        used = 0
        for unit in self._units(text):
            if current and used + unit[2] + 1 > self.max_tokens:  # +1: the joining whitespace
                spans.append((current[0][0], current[-1][1]))
                current = self._overlap(text, *spans[-1]) if self.overlap_tokens else []
                used = current[0][2] if current else 0
                if current and used + unit[2] + 1 > self.max_tokens:
                    current, used = [], 0
            current.append(unit)
            used += unit[2] + (1 if len(current) > 1 else 0)
        if current:
            spans.append((current[0][0], current[-1][1]))
        return self._enforce_limit(text, spans)

    def _enforce_limit(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Token counts of joined pieces are estimates: count each span, split any that runs over."""
        result = []
        for (start, end), tokens in zip(spans, self.count([text[a:b] for a, b in spans])):
            if tokens <= self.max_tokens:
                result.append((start, end, tokens))
            else:
                windows = [(a, b) for a, b, _ in self._token_windows(text, start, end)]
                result += [(a, b, n) for (a, b), n in zip(windows, self.count([text[a:b] for a, b in windows]))]
        return result


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def _reshard(path: str, size: int) -> Iterator[pa.Table]:
    """The rows of a Parquet file in tables of exactly `size` rows (the last may be shorter)."""
    buffer = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
        table = pa.Table.from_batches([batch])
        buffer = table if buffer is None else pa.concat_tables([buffer, table])
        while buffer.num_rows >= size:
            yield buffer.slice(0, size)
            buffer = buffer.slice(size)
    if buffer is not None and buffer.num_rows:
        yield buffer


def _page(page_starts: list[int] | None, char_start: int) -> int | None:
    return bisect_right(page_starts, char_start) if page_starts else None


def chunk(store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest) -> Manifest:
    """Two passes, memory bounded by one documents shard plus the chunk hashes: pass 1 chunks
    each documents shard into a local spool file, keeping the first chunk of each distinct text
    and noting where its exact duplicates are; pass 2 writes the kept chunks, with `also_in`,
    in shards of chunk_shard_size."""

    def work(writer: StageWriter) -> ChunkMetrics:
        started = time.monotonic()
        chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens, config.chunk_overlap_tokens)
        spool_schema = CHUNKS.remove(CHUNKS.get_field_index("also_in"))
        seen: set[bytes] = set()  # 128-bit text digests of kept chunks: about 80 bytes each
        duplicates: dict[bytes, list[dict]] = {}  # digest -> the other places with the same text
        metrics = ChunkMetrics(chunk_max_tokens=config.chunk_max_tokens,
                               chunk_overlap_tokens=config.chunk_overlap_tokens, chunk_min_chars=config.chunk_min_chars)
        with tempfile.TemporaryDirectory(prefix="bonito-chunk-") as tmp:
            spool_path = os.path.join(tmp, "spool.parquet")
            with pq.ParquetWriter(spool_path, spool_schema, compression="zstd") as spool:
                for shard in range(len(documents.shards_of("documents"))):
                    docs = store.read_shard(documents, "documents", shard, columns=["doc_id", "text", "page_starts"])
                    rows = []
                    for doc_id, text, page_starts in zip(*(docs[c].to_pylist() for c in docs.column_names)):
                        metrics.documents += 1
                        spans = chunker.split_counted(text)
                        kept = [s for s in spans if len(text[s[0]:s[1]].strip()) >= config.chunk_min_chars]
                        metrics.short_chunks += len(spans) - len(kept)
                        for index, (start, end, tokens) in enumerate(kept):
                            piece = text[start:end]
                            digest = _digest(piece)
                            if digest in seen:
                                duplicates.setdefault(digest, []).append(
                                    {"doc_id": doc_id, "char_start": start, "char_end": end})
                                continue
                            seen.add(digest)
                            rows.append({"chunk_id": sha256_hex(f"{doc_id}:{start}:{end}"), "doc_id": doc_id,
                                         "chunk_index": index, "char_start": start, "char_end": end,
                                         "n_tokens": tokens, "text": piece, "page": _page(page_starts, start)})
                    if rows:
                        spool.write_table(pa.Table.from_pylist(rows, spool_schema))
            metrics.chunks = len(seen)
            seen.clear()
            for table in _reshard(spool_path, config.chunk_shard_size):
                also_in = [duplicates.get(_digest(t), []) for t in table["text"].to_pylist()]
                writer.add("chunks", table.append_column("also_in", pa.array(also_in, CHUNKS.field("also_in").type)))
        metrics.shards = len(writer.shards)
        metrics.duplicate_chunks = sum(len(v) for v in duplicates.values())
        metrics.wall_s = round(time.monotonic() - started, 3)
        log.info("chunked %d documents into %d chunks in %d shard(s); dropped %d exact duplicate(s) and %d "
                 "chunk(s) under %d chars", metrics.documents, metrics.chunks, metrics.shards,
                 metrics.duplicate_chunks, metrics.short_chunks, config.chunk_min_chars)
        return metrics

    return run_stage(store, run, "chunk", config_sha256=config.sha256(), inputs=[documents], work=work,
                     check=lambda writer: check_chunks(store, writer, documents))
