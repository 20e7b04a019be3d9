"""Token-aware splitting of one document's text into chunks, cut at paragraph and sentence ends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from bonito_tasks.config import RunConfig

COUNT_BATCH = 256  # texts per tokenizer call
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")


def load_tokenizer(config: RunConfig) -> Any:
    from bonito_tasks.model_ref import check_model_reachable

    check_model_reachable(config.model_id)  # ModelNotFound (no retries) for a path that does not exist
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
