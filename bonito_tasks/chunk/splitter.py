"""Token-aware splitting of documents into chunks, cut at paragraph and sentence ends.

The contract: each chunk, tokenized on its own (no special tokens), has at most `max_tokens`
tokens, and the count returned with it (`n_tokens`) EQUALS that count. It is not an estimate and
not a bound. No chunk is tokenized to find its count; each character of the text goes through
the tokenizer about once, in large batches that span many documents (`Chunker.split_many`).

Why the arithmetic is exact
---------------------------
Call position p of a text a *cut* when text[p-1] is not whitespace and text[p] is a whitespace
character that the tokenizer provably never joins to what precedes it (`_cut_spaces`). Then,
for any strings x (ending where a cut starts) and y (starting with such whitespace),

    T(x + y) = T(x) ++ C(y)        C(y) does not depend on x; |C(y)| = |T("a" + y)| - |T("a")|

and C adds up over cuts: C(y + z) = C(y) ++ C(z). Two tokenizer families are recognized, by
reading the tokenizer's own definition (`tokenizer.json`):

- Byte-level BPE with the GPT-2 split regex (GPT-2, RoBERTa, the tiny test model), no
  normalizer. No alternative of that regex matches a non-space followed by a space, its only
  look-ahead (`\\s+(?!\\S)`) never reaches past a non-space and it has no look-behind, so the
  pieces of x + y are the pieces of x then those of y; BPE runs within a piece. Any ASCII
  whitespace at p is a cut.
- SentencePiece-style BPE over whole sections (Llama, Mistral, Bonito: spaces become "▁", one
  "▁" is prepended, no pre-tokenizer or a Metaspace one). A token that crosses p must come from
  a merge whose left part ends with the symbol of text[p-1] and whose right part starts with the
  symbol of text[p] (take the first merge that made a token across p: its two parts do not cross
  p). The merge list is checked: a whitespace character is a cut only if no merge puts its symbol
  first on the right of a part that does not end in whitespace.

In both, added tokens must hold no whitespace and not strip it (else the family is refused).

A chunk starts at a non-space character a and ends at a cut (or the end of the text) b. With r
the first cut after a, T(text[a:b]) = T(text[a:r]) ++ C(text[r:b]). So the text is read as
*records*, each ending at a cut: a whole paragraph when it will almost surely fit, else its
sentences, else pieces of an over-long sentence. Each record keeps H = |T(head)| (its head
text[a:r] tokenized alone) and the running sums of |C| at r and at b; a chunk made of records
i..j has exactly H_i + cum_b[j] - cum_r[i] tokens. Each body text[r:b] is tokenized once; heads
and joins (whitespace plus the next head) are short and repeat, so they are cached. A paragraph
is read whole only up to 80% of the budget at the text's mean characters per token; one that
does not fit after all is read again as sentences (rare). Counts are exact however the text is
cut into records, so the chunks never depend on it, nor on the batching or the other texts.

Anything else is not counted by arithmetic:
- A stretch of more than `window` characters with no cut (a 50 MiB line of base64, text without
  spaces) is tokenized a window at a time with offsets, cut at token starts into pieces, and each
  piece is tokenized on its own (split again while it is over `max_tokens`).
- A tokenizer outside both families (or one that fails the self-check on a probe text at start)
  gets the same arithmetic as an estimate: chunks are packed to a smaller budget, then each is
  tokenized on its own, so `n_tokens` is still its exact count and a chunk over `max_tokens` is
  split again (`Chunker.exact` is False; chunking then costs about twice the tokenization).

Memory: a document is read as a stream of records; a tokenizer call holds at most `batch_chars`
characters of text (each item at most about `window`), the caches are capped, and packing keeps
only the records of the chunk being built. The caller's text is the only thing of document size.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from bonito_tasks.tokens import load_tokenizer  # noqa: F401 - the chunk stage's, now shared with validate

log = logging.getLogger(__name__)

BATCH_CHARS = 1 << 20  # characters of text per tokenizer call (about 30 MB of encodings at most)
WHOLE_SHARE = 0.8  # a paragraph is read whole up to this share of the budget, at the mean characters per token
CACHE_ENTRIES = 1 << 17  # heads and joins remembered (each a word or two); cleared when full
ASCII_SPACE = " \t\n\r\x0b\x0c"
# Not whitespace to str.isspace(), but a tokenizer may treat them so: never the left side of a cut.
NOT_BEFORE_CUT = "\u2581\u180e\u200b\u200c\u200d\u2060\ufeff"
PARAGRAPH_BREAK = re.compile(r"[ \t]*\n[ \t]*\n\s*")  # a blank line
SENTENCE_END = re.compile(r"(?<=[.!?;:])([\"')\]]*)\s+")  # after [.!?;:] and closing quotes or brackets
NON_SPACE = re.compile(r"\S")
PROBE = (
    "Probe text.  It has two spaces, tabs\tand\ttabs; numbers 3.14 and 1,000! A line\nbreak, then a "
    "paragraph.\n\n  Indented «quotes» and “curly” ones — dashes… Ünïcödé wörds, 東京 and 大阪, emoji 😀 "
    "here.\r\nCRLF line; x=y+z (brackets) [more] {even}.\n\nTrailing spaces   \n \nLast: 'single' \"double\" "
    "end. Don't, can't, we'll; it's 'quoted.' Then (\"nested.\") Done?! Yes:\tno.\x0bVT\x0cFF "
    + "longwordwithoutanybreak" * 12 + " tail\xa0nbsp\u3000ideographic\u2009thin\u200bzero end.\n"
)

# Record flags: starts a paragraph, starts a sentence, starts a chain of running sums (the first
# record of a text or after a HARD stretch), a stretch without cuts, the text's end, a whole paragraph.
PARA, SENT, CHAIN, HARD, END, WHOLE = 1, 2, 4, 8, 16, 32
BY_PARAGRAPH, BY_SENTENCE, BY_RECORD = 0, 1, 2  # how the current paragraph is cut into units


def _backend_of(tokenizer: Any) -> Any:
    """A private copy of the fast tokenizer's `tokenizers.Tokenizer`, without truncation or padding."""
    from tokenizers import Tokenizer

    backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"Chunker needs a fast (Rust `tokenizers`) tokenizer, got {type(tokenizer).__name__}")
    backend = Tokenizer.from_str(backend.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


SPACE_BYTES = frozenset(f"<0x{ord(c):02X}>" for c in ASCII_SPACE)  # byte-fallback tokens of whitespace


def _ends_in_space(symbol: str) -> bool:
    return symbol.endswith("▁") or symbol[-1:] in ASCII_SPACE or symbol[-6:] in SPACE_BYTES


def _cut_spaces(backend: Any) -> tuple[frozenset[str], str]:
    """The whitespace characters at which this tokenizer provably cuts (see the module doc), or
    an empty set and the reason it is not of a family this module can prove that for."""
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return frozenset(), f"model {model.get('type')} (dropout {model.get('dropout')}) is not plain BPE"
    for added in spec.get("added_tokens") or []:
        content = added.get("content") or ""
        if not content or added.get("lstrip") or added.get("rstrip") or any(
                c.isspace() or c in NOT_BEFORE_CUT for c in content):
            return frozenset(), f"added token {content!r} holds or strips whitespace"
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    if pre is not None and pre.get("type") == "ByteLevel":
        if normalizer is None and pre.get("use_regex", True):
            return frozenset(ASCII_SPACE), ""
        return frozenset(), "byte-level without the GPT-2 split regex, or with a normalizer"
    # SentencePiece style: BPE over whole sections; a space becomes "▁" (Replace or Metaspace).
    space = None
    if pre is not None:
        if pre.get("type") != "Metaspace" or pre.get("replacement") != "▁":
            return frozenset(), f"pre-tokenizer {pre.get('type')} is not recognized"
        space = "▁"
    steps = [] if normalizer is None else (
        normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer])
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "▁":
            continue
        if step.get("type") == "Replace" and step.get("pattern") == {"String": " "} and step.get("content") == "▁":
            space = "▁"
            continue
        return frozenset(), f"normalizer {step.get('type')} is not recognized"
    if model.get("ignore_merges") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return frozenset(), "BPE with ignore_merges or subword affixes"
    vocab = model.get("vocab") or {}
    merges = []
    for merge in model.get("merges") or []:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if len(parts) != 2:
            return frozenset(), f"merge {merge!r} is ambiguous"
        merges.append(parts)
    safe = set()
    for char in ASCII_SPACE:
        symbol = space if char == " " and space else char
        if symbol not in vocab:
            symbol = f"<0x{ord(char):02X}>"  # byte fallback
            if not (model.get("byte_fallback") and symbol in vocab):
                continue  # would be <unk>, which may fuse with a neighbour
        if not any(right.startswith(symbol) and not _ends_in_space(left) for left, right in merges):
            safe.add(char)
    return frozenset(safe), "" if safe else "every whitespace symbol can merge with what precedes it"


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class Chunker:
    """Splits texts into [start, end) spans of at most `max_tokens` tokens each, cut at paragraph
    ends when a paragraph fits, else at sentence ends, else at word boundaries (else, in a stretch
    without any, at token boundaries). With `overlap_tokens`, a chunk starts with the last whole
    sentences (at most that many tokens) of the chunk before. Counts are exact (module doc)."""

    def __init__(self, tokenizer: Any, max_tokens: int, overlap_tokens: int = 0, *,
                 batch_chars: int = BATCH_CHARS, _self_check: bool = True):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.batch_chars = batch_chars
        self._backend = _backend_of(tokenizer)
        self._encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        safe, why = _cut_spaces(self._backend)
        self.exact = bool(safe)
        # A record up to `fragment` characters has at most 4 * fragment + 1 <= max_tokens tokens
        # (a token holds at least one byte; one more for a prepended space) in both families.
        self._fragment = max(16, (max_tokens - 1) // 4)
        self._window = max(1024, 8 * max_tokens)  # characters tokenized at once where there is no cut
        self._prefix = len(self._encode(["a"], add_special_tokens=False)[0])
        self._heads: dict[str, int] = {}
        self._joins: dict[str, int] = {}
        self._body_chars = self._body_tokens = 0  # for the characters-per-token estimate
        self._whole = 0  # paragraphs up to this many characters are read as one record
        self._set_cuts(safe or frozenset(ASCII_SPACE))
        if self.exact and _self_check:
            why = self._self_check()
            self.exact = not why
        if not self.exact:
            log.warning("chunk counts for this tokenizer are checked by tokenizing every chunk again (about "
                        "half the speed): %s", why)
            self._set_cuts(frozenset(ASCII_SPACE))
        self._budget = max_tokens if self.exact else max_tokens - max(2, max_tokens // 16)

    def _set_cuts(self, safe: frozenset[str]) -> None:
        self._safe = safe
        self._cut = re.compile(f"(?<=[^\\s{NOT_BEFORE_CUT}])[{re.escape(''.join(sorted(safe)))}]")

    def _self_check(self) -> str:
        """'' when the arithmetic matches real counts on a probe text, else what differed."""
        probe = Chunker(self.tokenizer, 24, 8, _self_check=False)
        for text in (PROBE, PROBE.replace(" ", "  "), PROBE[1:] * 3):
            for start, end, n in probe.split_counted(text):
                real = self.count([text[start:end]])[0]
                if real != n:
                    return f"probe chunk {text[start:end]!r} counted {n}, has {real} tokens"
        return ""

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text on its own (no special tokens)."""
        counts: list[int] = []
        first = 0
        while first < len(texts):
            last, size = first, 0
            while last < len(texts) and (last == first or size + len(texts[last]) <= self.batch_chars):
                size += len(texts[last])
                last += 1
            counts += [len(e) for e in self._encode(texts[first:last], add_special_tokens=False)]
            first = last
        return counts

    def split(self, text: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b, _ in self.split_counted(text)]

    def split_counted(self, text: str) -> list[tuple[int, int, int]]:
        """[start, end) spans of text with their exact token counts (see split_many)."""
        return self.split_many([text])[0]

    def split_many(self, texts: Iterable[str]) -> list[list[tuple[int, int, int]]]:
        """For each text, its chunks as (start, end, n_tokens): text[start:end] tokenized on its
        own has exactly n_tokens <= max_tokens tokens. Chunks are ordered and start and end at
        non-space characters; without overlap they are disjoint, with only whitespace between.
        The texts are tokenized together in large batches (about `batch_chars` characters per
        tokenizer call), so many short documents cost no more per character than one long one.
        The result depends only on each text, never on the others or on the batching."""
        return list(self.iter_split(texts))

    def iter_split(self, texts: Iterable[str]) -> Iterator[list[tuple[int, int, int]]]:
        """split_many as a generator: yields each text's chunks, in order, once it is done."""
        docs: deque[_Doc] = deque()
        batch = _Batch(self)
        limit = self.batch_chars if self._body_tokens else min(self.batch_chars, 1 << 16)  # calibrate early
        for text in texts:
            doc = _Doc(self, text)
            docs.append(doc)
            chain, before = CHAIN, 0  # before: the end of the previous record
            for start, end, flags in self._records(text):
                if flags & HARD:
                    batch.items.append((doc, start, end, HARD, None, None, -1))
                    chain = CHAIN
                    continue
                batch.add(doc, text, start, end, flags | chain, before)
                chain, before = 0, end
                if batch.size >= limit:
                    batch.run()
                    batch, limit = _Batch(self), self.batch_chars
                    if len(self._heads) > CACHE_ENTRIES:
                        self._heads.clear()
                    if len(self._joins) > CACHE_ENTRIES:
                        self._joins.clear()
                    while docs and docs[0].finished:
                        yield docs.popleft().chunks
            batch.items.append((doc, 0, 0, END, None, None, -1))
        batch.run()
        while docs:
            yield docs.popleft().chunks

    def _refine(self, text: str, record: tuple) -> list[tuple]:
        """The records of the sentences of a whole-paragraph record, on the same running sums (a
        whole paragraph is at most a window long, so it holds no HARD stretch)."""
        start, end, _, _, at_r, _ = record
        records = _Records()
        batch = _Batch(self)
        chain, before = CHAIN, 0
        for s, e, flags in self._sentences(text, start, end):
            batch.add(records, text, s, e, flags | chain, before)
            chain, before = 0, e
        batch.run()
        return [(s, e, flags, h, r + at_r, b + at_r) for s, e, flags, h, r, b in records.records]

    def _is_cut(self, text: str, p: int) -> bool:
        return text[p] in self._safe and text[p - 1] not in NOT_BEFORE_CUT and not text[p - 1].isspace()

    def _last_cut(self, text: str, low: int, high: int) -> int:
        """The last cut in (low, high], or -1."""
        stop = high + 1
        while True:
            p = max(text.rfind(c, low + 1, stop) for c in self._safe)
            if p < 0 or self._is_cut(text, p):
                return p
            stop = p

    def _records(self, text: str) -> Iterator[tuple[int, int, int]]:
        """(start, end, flags) of the text's records, in order: a paragraph ending at a cut, whole
        when it is short enough to fit almost surely (and within a window), else its sentences
        (see _sentences). Starts and ends are at non-space characters."""
        first = NON_SPACE.search(text)
        if first is None:
            return
        start, whole = first.start(), min(self._whole, self._window)
        for brk in PARAGRAPH_BREAK.finditer(text, start):
            end = brk.start()
            while text[end - 1].isspace():
                end -= 1
            if not self._is_cut(text, end):
                continue  # the paragraph goes on: no chunk can end here
            if end - start <= whole:
                yield start, end, PARA | SENT | WHOLE
            else:
                yield from self._sentences(text, start, end)
            start = brk.end()
        end = _trim(text, start, len(text))[1]
        if start < end:
            if end - start <= whole:
                yield start, end, PARA | SENT | WHOLE
            else:
                yield from self._sentences(text, start, end)

    def _sentences(self, text: str, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """The records of the paragraph [start, end): its sentences, each ending at a cut; one over
        `fragment` characters in pieces ending at cuts; a stretch of more than `window` characters
        without a cut as one HARD record."""
        flags = PARA | SENT
        for sep in SENTENCE_END.finditer(text, start, end):
            stop = sep.start() + len(sep.group(1))
            if not self._is_cut(text, stop):
                continue
            if stop - start <= self._fragment:
                yield start, stop, flags
            else:
                yield from self._pieces(text, start, stop, flags)
            flags, start = SENT, sep.end()
        if end - start <= self._fragment:
            yield start, end, flags
        else:
            yield from self._pieces(text, start, end, flags)

    def _pieces(self, text: str, start: int, end: int, flags: int) -> Iterator[tuple[int, int, int]]:
        """A long sentence in pieces of at most `fragment` characters ending at cuts (longer where
        a word is longer), or HARD stretches of more than `window` characters without a cut."""
        p = start
        while True:
            if end - p <= self._fragment:
                yield p, end, flags
                return
            c = self._last_cut(text, p, p + self._fragment)
            if c < 0:
                match = self._cut.search(text, p + self._fragment, end)
                c = match.start() if match else end
                if c - p > self._window:
                    yield p, c, HARD
                    following = NON_SPACE.search(text, c, end)
                    if following is None:
                        return
                    p, flags = following.start(), 0
                    continue
            yield p, c, flags
            if c >= end:
                return
            following = NON_SPACE.search(text, c, end)
            assert following is not None  # a paragraph ends at a non-space character, so one follows a cut
            p, flags = following.start(), 0

    def _hard_pieces(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """text[start:end], where there is no cut to count by, tokenized a window at a time and cut
        at token starts into pieces, each then counted on its own (and split while over max_tokens)."""
        step = max(1, self.max_tokens - 2)
        pieces = []
        p = start
        while p < end:
            stop = min(end, p + self._window)
            offsets = self._backend.encode(text[p:stop], add_special_tokens=False).offsets
            bounds = [p]
            for i in range(step, len(offsets), step):
                if p + offsets[i][0] > bounds[-1]:
                    bounds.append(p + offsets[i][0])
            following = bounds.pop() if stop < end and len(bounds) > 1 else stop
            bounds.append(following)
            spans = [_trim(text, a, b) for a, b in zip(bounds, bounds[1:])]
            pieces += self._fit(text, [(a, b) for a, b in spans if a < b])
            p = following
        return pieces

    def _fit(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Spans with their counts, each over max_tokens split in two (by characters) until it fits;
        counted about `batch_chars` characters at a time."""
        result = []
        first = 0
        while first < len(spans):
            last, size = first, 0
            while last < len(spans) and (last == first or size + spans[last][1] - spans[last][0] <= self.batch_chars):
                size += spans[last][1] - spans[last][0]
                last += 1
            group = spans[first:last]
            for (a, b), n in zip(group, self.count([text[a:b] for a, b in group])):
                if n <= self.max_tokens:
                    result.append((a, b, n))
                elif b - a <= 1:
                    raise ValueError(f"one character, {text[a:b]!r}, has {n} tokens: more than max_tokens")
                else:
                    middle = (a + b) // 2
                    halves = (_trim(text, a, middle), _trim(text, middle, b))
                    result += self._fit(text, [h for h in halves if h[0] < h[1]])
            first = last
        return result


class _Batch:
    """Records of one or more texts, counted with one tokenizer call: each record's head (cached),
    its join to the record before (cached) and its body (see the module doc)."""

    __slots__ = ("chunker", "items", "strings", "head_miss", "join_miss", "size")

    def __init__(self, chunker: Chunker):
        self.chunker = chunker
        self.items: list[tuple] = []
        self.strings: list[str] = []
        self.head_miss: dict[str, int] = {}
        self.join_miss: dict[str, int] = {}
        self.size = 0

    def add(self, doc: Any, text: str, start: int, end: int, flags: int, before: int) -> None:
        chunker, strings = self.chunker, self.strings
        match = chunker._cut.search(text, start + 1, end)
        r = match.start() if match else end
        head = text[start:r]
        if head not in chunker._heads and head not in self.head_miss:
            self.head_miss[head] = len(strings)
            strings.append(head)
        join = None
        if not flags & CHAIN:
            join = text[before:r]
            if join not in chunker._joins and join not in self.join_miss:
                self.join_miss[join] = len(strings)
                strings.append("a" + join)
        body = -1
        if r < end:
            body = len(strings)
            strings.append("a" + text[r:end])
        self.items.append((doc, start, end, flags, head, join, body))
        self.size += end - start

    def run(self) -> None:
        """Counts the records and feeds them, in order, to their documents."""
        chunker, strings = self.chunker, self.strings
        lengths = [len(e) for e in chunker._encode(strings, add_special_tokens=False)] if strings else []
        prefix, heads, joins = chunker._prefix, chunker._heads, chunker._joins
        for head, i in self.head_miss.items():
            heads[head] = lengths[i]
        for join, i in self.join_miss.items():
            joins[join] = lengths[i] - prefix
        body_chars = body_tokens = 0
        for doc, start, end, flags, head, join, body in self.items:
            if flags & (HARD | END):
                doc.hard(start, end) if flags & HARD else doc.finish()
                continue
            at_r = 0 if flags & CHAIN else doc.cum + joins[join]
            if body >= 0:
                tokens = lengths[body] - prefix
                body_chars += len(strings[body]) - 1
                body_tokens += tokens
                doc.cum = at_r + tokens
            else:
                doc.cum = at_r
            doc.feed((start, end, flags, heads[head], at_r, doc.cum))
        chunker._body_chars += body_chars
        chunker._body_tokens += body_tokens
        if chunker.exact and not chunker.overlap_tokens and chunker._body_tokens:
            # 80% of the budget at the text's mean characters per token: a paragraph that does not
            # fit after all is cut into sentences then (_refine). The result is the same either way.
            per_token = chunker._body_chars / chunker._body_tokens
            chunker._whole = int(per_token * chunker._budget * WHOLE_SHARE)


class _Records:
    """Collects counted records (for _refine) where a _Doc would pack them."""

    __slots__ = ("cum", "records")

    def __init__(self):
        self.cum = 0
        self.records: list[tuple] = []

    def feed(self, record: tuple) -> None:
        self.records.append(record)


class _Doc:
    """Packs one document's counted records into chunks, greedily, in units: a whole paragraph
    when it fits, else whole sentences, else records. A record is (start, end, flags, H, at_r, at_end);
    records i..j count H_i + at_end_j - at_r_i tokens."""

    __slots__ = ("chunker", "text", "chunks", "cum", "mode", "pending", "current", "finished")

    def __init__(self, chunker: Chunker, text: str):
        self.chunker = chunker
        self.text = text
        self.chunks: list[tuple[int, int, int]] = []
        self.cum = 0  # running |C| at the end of the last record
        self.mode = BY_PARAGRAPH
        self.pending: list[tuple] = []  # records of the paragraph (or sentence) not yet cut into units
        self.current: list[tuple] = []  # records of the chunk being built
        self.finished = False

    def feed(self, record: tuple) -> None:
        flags = record[2]
        if flags & WHOLE and record[3] + record[5] - record[4] > self.chunker._budget:
            for sentence in self.chunker._refine(self.text, record):
                self.feed(sentence)
            return
        if flags & PARA:
            self._close()
        elif flags & SENT and self.mode != BY_PARAGRAPH:
            self._close(BY_SENTENCE)
        if self.mode == BY_RECORD:
            self._add([record])
            return
        pending = self.pending
        pending.append(record)
        if pending[0][3] + record[5] - pending[0][4] > self.chunker._budget:
            self._overflow()

    def _close(self, mode: int = BY_PARAGRAPH) -> None:
        if self.pending:
            self._add(self.pending)
            self.pending = []
        self.mode = mode

    def _overflow(self) -> None:
        pending, budget = self.pending, self.chunker._budget
        if self.mode == BY_PARAGRAPH:  # the paragraph does not fit: its finished sentences are units
            sentence = 0
            for i in range(1, len(pending)):
                if pending[i][2] & SENT:
                    self._add(pending[sentence:i])
                    sentence = i
            pending = self.pending = pending[sentence:]
            self.mode = BY_SENTENCE
            if pending[0][3] + pending[-1][5] - pending[0][4] <= budget:
                return
        self.mode = BY_RECORD  # the sentence does not fit: each of its records is a unit
        self.pending = []
        for record in pending:
            self._add([record])

    def _add(self, unit: list[tuple]) -> None:
        first, last = unit[0], unit[-1]
        budget = self.chunker._budget
        if first[3] + last[5] - first[4] > budget:
            if len(unit) > 1:
                for record in unit:
                    self._add([record])
            else:  # one record over the budget: no cut inside it is usable
                self._emit()
                self.chunks += self.chunker._hard_pieces(self.text, first[0], first[1])
            return
        current = self.current
        if current:
            if current[0][3] + last[5] - current[0][4] <= budget:
                current += unit
                return
            carry = self._emit()
            if carry and carry[0][3] + last[5] - carry[0][4] <= budget:
                self.current = carry + unit
                return
        self.current = list(unit)

    def _emit(self) -> list[tuple]:
        """Ends the current chunk; returns its trailing whole sentences within overlap_tokens."""
        current, self.current = self.current, []
        if not current:
            return []
        first, last = current[0], current[-1]
        count = first[3] + last[5] - first[4]
        self.chunks.append((first[0], last[1], count if self.chunker.exact else -1))
        carry: list[tuple] = []
        overlap = self.chunker.overlap_tokens
        if overlap:
            for i in range(len(current) - 1, 0, -1):
                record = current[i]
                if record[2] & SENT:
                    if record[3] + last[5] - record[4] > overlap:
                        break
                    carry = current[i:]
        return carry

    def hard(self, start: int, end: int) -> None:
        self._close()
        self._emit()
        self.chunks += self.chunker._hard_pieces(self.text, start, end)

    def finish(self) -> None:
        self._close()
        self._emit()
        if not self.chunker.exact:  # estimated counts: count every chunk on its own
            unchecked = [(a, b) for a, b, n in self.chunks if n < 0]
            counted = iter(self.chunker._fit(self.text, unchecked))  # in order; a split span gives several
            checked: list[tuple[int, int, int]] = []
            for a, b, n in self.chunks:
                if n >= 0:
                    checked.append((a, b, n))
                    continue
                piece = next(counted)
                while True:
                    checked.append(piece)
                    if piece[1] >= b:
                        break
                    piece = next(counted)
            self.chunks = checked
        self.finished = True
