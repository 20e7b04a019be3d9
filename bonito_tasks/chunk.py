"""Chunk stage: documents -> chunks of at most N model tokens, cut at paragraph and sentence ends.

Chunks are written in shards of `chunk_shard_size`; generate is mapped over the shards.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterator

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CHUNKS, Manifest, RunRef, sha256_hex
from bonito_tasks.store import ArtifactStore, StageWriter

log = logging.getLogger(__name__)

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
    def __init__(self, tokenizer: Any, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

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

    def split(self, text: str) -> list[tuple[int, int]]:
        """[start, end) spans of text, each at most max_tokens when tokenized on its own."""
        spans: list[tuple[int, int]] = []
        current: list[tuple[int, int, int]] = []
        used = 0
        for unit in self._units(text):
            if current and used + unit[2] + 1 > self.max_tokens:  # +1: the joining whitespace
                spans.append((current[0][0], current[-1][1]))
                current, used = [], 0
            current.append(unit)
            used += unit[2] + (1 if len(current) > 1 else 0)
        if current:
            spans.append((current[0][0], current[-1][1]))
        return self._enforce_limit(text, spans)

    def _enforce_limit(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Token counts of joined pieces are estimates; split any span that still runs over."""
        result = []
        for (start, end), tokens in zip(spans, self.count([text[a:b] for a, b in spans])):
            if tokens <= self.max_tokens:
                result.append((start, end))
            else:
                result.extend((a, b) for a, b, _ in self._token_windows(text, start, end))
        return result


def chunk(store: ArtifactStore, run: RunRef, config: RunConfig, documents: Manifest) -> Manifest:
    writer = StageWriter(store, run, "chunk")
    if done := writer.reusable(config.sha256(), [documents]):
        log.info("chunk already committed at %s; reusing it", done.uri)
        return done
    writer.begin()
    started = time.monotonic()
    chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens)
    pending: list[dict] = []
    n_docs = 0

    def flush(rows: list[dict]) -> None:
        writer.add("chunks", pa.Table.from_pylist(rows, CHUNKS))

    for shard in range(len(documents.shards_of("documents"))):
        docs = store.read_shard(documents, "documents", shard, columns=["doc_id", "text"])
        for doc_id, text in zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist()):
            n_docs += 1
            spans = chunker.split(text)
            pieces = [text[a:b] for a, b in spans]
            for index, ((start, end), piece, tokens) in enumerate(zip(spans, pieces, chunker.count(pieces))):
                pending.append({
                    "chunk_id": sha256_hex(f"{doc_id}:{start}:{end}"),
                    "doc_id": doc_id,
                    "chunk_index": index,
                    "char_start": start,
                    "char_end": end,
                    "n_tokens": tokens,
                    "text": piece,
                })
                if len(pending) == config.chunk_shard_size:
                    flush(pending)
                    pending = []
    if pending:
        flush(pending)
    manifest = writer.commit(
        config_sha256=config.sha256(),
        inputs=[documents],
        counts={"documents": n_docs, "shards": len(writer.shards)},
        metrics={"wall_s": round(time.monotonic() - started, 3), "chunk_max_tokens": config.chunk_max_tokens},
    )
    log.info("chunked %d documents into %d chunks in %d shard(s)", n_docs, manifest.counts.get("chunks", 0),
             len(writer.shards))
    return manifest
