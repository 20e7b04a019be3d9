"""Quality filters for chunks, before any GPU time is spent on them.

Heuristics of the kind Gopher (Rae et al. 2021), C4 and FineWeb use, as datatrove and NeMo Curator
implement them, adapted to chunks (a passage of at most a few hundred words, not a web page):
each chunk that fails one gets the stable reason of the first filter it fails, in this order:

    too_few_words        fewer than `quality_min_words` words (a word: a run of letters)
    digit_ratio          digits / non-space characters > `quality_max_digit_ratio` (tables of figures)
    symbol_ratio         symbols (# | * _ { } < > = + ~ ^ @ $ % & ` \\ [ ], dot leaders "...", "…",
                         bullets, arrows, box drawing, math) / non-space characters > `quality_max_symbol_ratio`
    mean_word_length     mean word length outside [`quality_min_mean_word_length`, `quality_max_mean_word_length`]
    boilerplate          share of characters on boilerplate lines (cookie and privacy notices, "all
                         rights reserved", navigation, sign-up and share prompts, "page 3 of 9",
                         lorem ipsum) > `quality_max_boilerplate_lines`
    unpunctuated_lines   with 3 or more lines: share of lines that end without punctuation, where the
                         next line does not carry on the sentence (start in lower case), >
                         `quality_max_unpunctuated_lines` (tables of contents, lists of headings, tables)
    repeated_lines       share of characters on lines that repeat an earlier line > `quality_max_repeated_lines`
    repeated_ngrams      share of word 5-grams that repeat an earlier one > `quality_max_repeated_ngrams`
    language             `quality_languages` set and the chunk's probability of being in one of
                         them (py3langid) under 0.5

Word-based filters (too_few_words, mean_word_length) are skipped for text mostly in scripts written
without spaces (Chinese, Japanese, Thai), where a "word" is not a run of letters.

Why not a library for the heuristics: datatrove's filters need its `processing` extra, which pins
trafilatura < 1.12 and xxhash < 4 (this project uses trafilatura 2 and xxhash 4 through datasets)
and tokenizes words with NLTK's punkt data, downloaded at run time; NeMo Curator brings Dask/Ray
and RAPIDS-sized dependencies. The rules are short; here they are computed for a whole batch of
chunks at once, which is what makes them fast enough to run on every chunk (benchmarks/quality_bench.py):
character classes with numpy over the batch's UTF-8 bytes; lines with Arrow's string kernels (trims,
RE2 regexes) over all the batch's lines, Python's own regexes only on the few lines RE2 lets through;
the character filters first, the line filters only on the chunks still kept. `_lines` is the
reference, text by text, that the batch computation must agree with (tests).

Language identification: py3langid (BSD-3), a maintained fork of langid.py that ships its model
in the wheel (4.5 MB; 97 languages, nothing is downloaded at run time): about 0.3 ms for the
first LANGUAGE_SAMPLE_CHARS of a chunk. lingua-language-detector (Apache-2.0) is more accurate
on very short text, but its wheel is 96 MB, its models take 1.4 GB of memory and 40 s to load
with every language, and it is about 5x slower per chunk here; chunks are long enough for langid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.config import RunConfig
from bonito_tasks.minhash import Shingles, shingles


class QualityReason(StrEnum):
    """Why a chunk is dropped: the filters, in the order they run (a chunk counts for the first it fails)."""

    TOO_FEW_WORDS = "too_few_words"
    DIGIT_RATIO = "digit_ratio"
    SYMBOL_RATIO = "symbol_ratio"
    MEAN_WORD_LENGTH = "mean_word_length"
    BOILERPLATE = "boilerplate"
    UNPUNCTUATED_LINES = "unpunctuated_lines"
    REPEATED_LINES = "repeated_lines"
    REPEATED_NGRAMS = "repeated_ngrams"
    LANGUAGE = "language"


REASONS = tuple(QualityReason)
_CODE = {reason: code for code, reason in enumerate(REASONS)}
LANGUAGE_SAMPLE_CHARS = 600  # langid reads this much of a chunk (its cost grows with the length)
MIN_LINES = 3  # unpunctuated_lines applies to chunks of at least this many non-blank lines
UNSPACED_SHARE = 0.3  # above this share of characters in unspaced scripts, word-based filters are skipped

# Each byte's class, for one count per text and class: ASCII letter, continuation byte (0x80-0xBF:
# not a character of its own), lead byte of a non-ASCII character (counted as a letter), lead byte
# of a CJK/kana character (U+3000-U+9FFF: E3-E9; a letter written without spaces), digit, symbol, space.
OTHER, LETTER, CONTINUATION, LEAD, UNSPACED, DIGIT, SYMBOL, SPACE = range(8)
_CLASS = np.full(256, OTHER, dtype=np.uint8)
_CLASS[ord("A"):ord("Z") + 1] = _CLASS[ord("a"):ord("z") + 1] = LETTER
_CLASS[0x80:0xC0] = CONTINUATION
_CLASS[0xC0:] = LEAD
_CLASS[0xE3:0xEA] = UNSPACED
_CLASS[ord("0"):ord("9") + 1] = DIGIT
_CLASS[np.frombuffer(b"#$%&*+<=>@[\\]^_`{|}~", dtype=np.uint8)] = SYMBOL
_CLASS[[9, 10, 11, 12, 13, 32]] = SPACE
_IN_WORD = np.zeros(8, dtype=bool)
_IN_WORD[[LETTER, CONTINUATION, LEAD, UNSPACED]] = True

NON_ASCII_SYMBOLS = re.compile(
    "[\u00a6-\u00a9\u00ac\u00ae-\u00b1\u00b4\u00b6\u00d7\u00f7\u2022-\u2025\u2030-\u203b\u2041-\u205e"
    "\u2070-\u2bff\ue000-\uf8ff\U0001f000-\U0001faff]")
DOT_LEADERS = re.compile(r"\.{3,}|…+|(?:\. ){3,}")
END_PUNCTUATION = tuple(".!?:;,\"')]}»”’…。！？；：")
BOILERPLATE = re.compile(
    r"cookies?\b.{0,40}\b(?:policy|settings|preferences|consent|accept|use)|(?:we use|accept|allow|reject|manage)"
    r"\b.{0,20}cookies|privacy (?:policy|notice|settings|statement)|terms of (?:use|service)|all rights reserved"
    r"|^(?:©|\(c\)|copyright)\s*(?:\(c\)\s*|©\s*)?(?:19|20)\d\d[^.]{0,48}\.?$|click here|(?:read|learn|see) more"
    r"|subscribe|newsletter"
    r"|sign (?:up|in)|log ?in\b|create an account|follow us|share (?:this|on)|like us on|skip to"
    r"|back to top|javascript|your browser|powered by|contact us|about us|sitemap|lorem ipsum"
    r"|^page \d+(?: of \d+)?$|accept all|manage preferences|advertisement")
# A line counts as boilerplate (BOILERPLATE or navigation) only if it holds one of these: checked first
# (one RE2 pass over all the lines of a batch), since the regexes are far slower.
BOILERPLATE_HINTS = ("cookie", "privacy ", "terms of ", "rights reserved", "©", "(c)", "copyright", "click here",
                     " more", "subscribe", "newsletter", "sign up", "sign in", "log in", "login", "create an account",
                     "follow us", "share this", "share on", "like us on", "skip to", "back to top", "javascript",
                     "your browser", "powered by", "contact us", "about us", "sitemap", "lorem ipsum", "page ",
                     "accept all", "manage preferences", "advertisement", " | ", " • ", " · ", " › ", " » ", " / ")
NAVIGATION_SEPARATORS = re.compile(r"\s[|•·›»/]\s")  # "Home | About | Contact", breadcrumbs
LINE_MARKERS = ">*-#•·+ \t"  # quote, list and heading marks a line may start with (Markdown, lists)


def _default(param: str) -> Any:
    """The default of a RunConfig param: the one place the thresholds' defaults are written."""
    return RunConfig.model_fields[param].default


@dataclass(frozen=True)
class Thresholds:
    """The filters' thresholds: RunConfig's quality_* params (their defaults unless given)."""

    min_words: int = _default("quality_min_words")
    max_digit_ratio: float = _default("quality_max_digit_ratio")
    max_symbol_ratio: float = _default("quality_max_symbol_ratio")
    min_mean_word_length: float = _default("quality_min_mean_word_length")
    max_mean_word_length: float = _default("quality_max_mean_word_length")
    max_boilerplate_lines: float = _default("quality_max_boilerplate_lines")
    max_unpunctuated_lines: float = _default("quality_max_unpunctuated_lines")
    max_repeated_lines: float = _default("quality_max_repeated_lines")
    max_repeated_ngrams: float = _default("quality_max_repeated_ngrams")
    languages: tuple[str, ...] = ()  # empty: any language

    @classmethod
    def from_config(cls, config: RunConfig) -> Thresholds:
        """quality_<field> for every field (languages from quality_languages)."""
        values = {f.name: getattr(config, f"quality_{f.name}") for f in fields(cls)}
        return cls(**{**values, "languages": tuple(values["languages"])})


@dataclass(frozen=True)
class Features:
    """What the filters measure, one value per chunk (numpy arrays)."""

    words: np.ndarray
    mean_word_length: np.ndarray
    digit_ratio: np.ndarray
    symbol_ratio: np.ndarray
    unspaced: np.ndarray  # bool: mostly in a script without spaces
    boilerplate: np.ndarray
    lines: np.ndarray
    unpunctuated_lines: np.ndarray
    repeated_lines: np.ndarray
    repeated_ngrams: np.ndarray


def features(texts: list[str], shingled: Shingles | None = None) -> Features:
    """Measure a batch of chunks (every filter's measure, for every chunk; `assess` measures only
    what it needs)."""
    batch = _Batch(texts)
    c = _char_features(batch)
    boilerplate, lines, unpunctuated, repeated = _line_features(batch, np.arange(len(texts)))
    if shingled is None:
        shingled = shingles(texts)
    return Features(
        words=c.words, mean_word_length=c.mean_word_length, digit_ratio=c.digit_ratio,
        symbol_ratio=c.symbol_ratio, unspaced=c.unspaced, boilerplate=boilerplate, lines=lines,
        unpunctuated_lines=unpunctuated, repeated_lines=repeated, repeated_ngrams=shingled.duplicate_share(),
    )


def assess(texts: list[str], thresholds: Thresholds, shingled: Shingles | None = None) -> list[str | None]:
    """Per chunk: the first filter it fails (a REASONS entry), or None to keep it. The filters run
    in REASONS order on the chunks still kept: the character counts (four filters) on all, the line
    filters on those left, the word n-grams and language on those left after that."""
    n = len(texts)
    reason = np.full(n, -1, dtype=np.int64)  # index into REASONS, -1: kept so far

    def fail(why: QualityReason, rows: np.ndarray, failed: np.ndarray) -> None:
        rows = rows[failed & (reason[rows] < 0)]
        reason[rows] = _CODE[why]

    batch = _Batch(texts)
    c = _char_features(batch)
    everyone = np.arange(n)
    word_based = ~c.unspaced
    fail(QualityReason.TOO_FEW_WORDS, everyone, word_based & (c.words < thresholds.min_words))
    fail(QualityReason.DIGIT_RATIO, everyone, c.digit_ratio > thresholds.max_digit_ratio)
    fail(QualityReason.SYMBOL_RATIO, everyone, c.symbol_ratio > thresholds.max_symbol_ratio)
    fail(QualityReason.MEAN_WORD_LENGTH, everyone, word_based & ((c.mean_word_length < thresholds.min_mean_word_length)
                                    | (c.mean_word_length > thresholds.max_mean_word_length)))
    rows = np.flatnonzero(reason < 0)
    boilerplate, lines, unpunctuated, repeated = _line_features(batch, rows)
    fail(QualityReason.BOILERPLATE, rows, boilerplate > thresholds.max_boilerplate_lines)
    fail(QualityReason.UNPUNCTUATED_LINES, rows,
         (lines >= MIN_LINES) & (unpunctuated > thresholds.max_unpunctuated_lines))
    fail(QualityReason.REPEATED_LINES, rows, repeated > thresholds.max_repeated_lines)
    rows = np.flatnonzero(reason < 0)
    if len(rows):  # the shingles of the texts left (all of them when the caller has them: no copy)
        shares = shingles([texts[i] for i in rows]).duplicate_share() if shingled is None else \
            shingled.duplicate_share()[rows]
        fail(QualityReason.REPEATED_NGRAMS, rows, shares > thresholds.max_repeated_ngrams)
    reasons: list[str | None] = [REASONS[r] if r >= 0 else None for r in reason.tolist()]
    if thresholds.languages:
        identifier = language_identifier()
        wanted = set(thresholds.languages)
        for i, text in enumerate(texts):
            if reasons[i] is None and language_share(identifier, text, wanted) < 0.5:
                reasons[i] = QualityReason.LANGUAGE
    return reasons


class _Batch:
    """A batch of texts as one UTF-8 buffer: text i is blob[offsets[i]:offsets[i] + nbytes[i]], followed
    by a "\\n" (so that a count over blob[offsets[i]:offsets[i + 1]] is never over an empty range).
    Texts holding lone surrogates (encoded with surrogatepass: not valid UTF-8) are flagged `invalid`:
    Arrow's string kernels see only the others."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        n = len(texts)
        try:
            encoded = [t.encode() for t in texts]
            self.invalid = np.zeros(n, dtype=bool)
        except UnicodeEncodeError:
            encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
            self.invalid = np.fromiter((not _valid(t) for t in texts), bool, count=n)
        self.blob = b"\n".join(encoded) + b"\n"
        self.nbytes = np.fromiter(map(len, encoded), np.int64, count=n)
        self.chars = np.fromiter(map(len, texts), np.int64, count=n)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.nbytes + 1, out=self.offsets[1:])
        self._arrow: pa.Array | None = None

    def arrow(self, rows: np.ndarray) -> pa.Array:
        """The texts `rows` (distinct, ascending, all valid) as an Arrow large_string array, each
        ending in "\\n" (a blank last line, which the line measures skip)."""
        if self._arrow is None:
            self._arrow = pa.Array.from_buffers(pa.large_string(), len(self.texts),
                                                [None, pa.py_buffer(self.offsets), pa.py_buffer(self.blob)])
        if len(rows) == len(self.texts):
            return self._arrow
        return self._arrow.take(pa.array(rows, pa.int64()))


def _valid(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class _CharFeatures:
    words: np.ndarray
    mean_word_length: np.ndarray
    digit_ratio: np.ndarray
    symbol_ratio: np.ndarray
    unspaced: np.ndarray


_CLASS_TABLE = _CLASS.tobytes()


def _char_features(batch: _Batch) -> _CharFeatures:
    """Byte classes counted per text with numpy over the whole batch (bytes.translate, then one
    count_nonzero per text and class), plus the symbols a byte class cannot see (non-ASCII symbols,
    dot leaders) with RE2."""
    n = len(batch.texts)
    if not n:
        empty = np.zeros(0)
        return _CharFeatures(empty, empty, empty, empty, empty.astype(bool))
    classes = np.frombuffer(batch.blob.translate(_CLASS_TABLE), dtype=np.uint8)
    spans = list(zip(batch.offsets[:-1].tolist(), batch.offsets[1:].tolist()))

    def count(mask: np.ndarray) -> np.ndarray:
        nonzero = np.count_nonzero
        return np.fromiter((nonzero(mask[start:end]) for start, end in spans), np.int64, count=n)

    spaces = count(classes == SPACE) - 1  # the "\n" after each text
    nonspace = np.maximum(batch.chars - spaces, 1)
    digits, symbols, unspaced = count(classes == DIGIT), count(classes == SYMBOL), count(classes == UNSPACED)
    in_word = (classes - np.uint8(LETTER)) <= np.uint8(UNSPACED - LETTER)  # LETTER .. UNSPACED (OTHER wraps)
    word_starts = in_word.copy()
    word_starts[1:] &= ~in_word[:-1]
    words = count(word_starts)
    # Letters, non-ASCII characters: the word bytes less the continuation bytes (all of them are in words).
    word_chars = count(in_word) - (batch.nbytes - batch.chars)
    symbols += _extra_symbols(batch)
    return _CharFeatures(words=words, mean_word_length=word_chars / np.maximum(words, 1),
                         digit_ratio=digits / nonspace, symbol_ratio=symbols / nonspace,
                         unspaced=unspaced > UNSPACED_SHARE * nonspace)


_NON_ASCII_SYMBOLS_RE2 = NON_ASCII_SYMBOLS.pattern  # a character class: the same in RE2
_DOT_LEADERS_RE2 = DOT_LEADERS.pattern  # RE2 matches leftmost-first like Python here (no backreferences)


def _extra_symbols(batch: _Batch) -> np.ndarray:
    """Per text: characters NON_ASCII_SYMBOLS matches plus characters DOT_LEADERS' matches span."""
    n = len(batch.texts)
    extra = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(batch.invalid):  # not valid UTF-8: Python's regexes, text by text
        text = batch.texts[i]
        extra[i] = len(NON_ASCII_SYMBOLS.findall(text)) + sum(len(m) for m in DOT_LEADERS.findall(text))
    non_ascii = np.flatnonzero((batch.nbytes != batch.chars) & ~batch.invalid)
    if len(non_ascii):
        extra[non_ascii] += pc.count_substring_regex(batch.arrow(non_ascii), _NON_ASCII_SYMBOLS_RE2).to_numpy()
    # DOT_LEADERS matches only at a ".." or ". ." or "…": the texts holding one go to RE2; the
    # characters its matches span are those that removing them takes.
    data = np.frombuffer(batch.blob, dtype=np.uint8)
    dot = data == ord(".")
    at = _sparse_nonzero(dot[:-2] & (dot[1:-1] | (data[1:-1] == ord(" ")) & dot[2:]))
    dots = np.unique(np.searchsorted(batch.offsets, at, side="right") - 1)
    ellipsis = [i for i in non_ascii.tolist() if "…" in batch.texts[i]]
    if ellipsis:
        dots = np.union1d(dots, ellipsis)
    dots = dots[~batch.invalid[dots]]
    if len(dots):
        some = batch.arrow(dots)
        kept = pc.replace_substring_regex(some, _DOT_LEADERS_RE2, "")
        extra[dots] += pc.subtract(pc.utf8_length(some), pc.utf8_length(kept)).to_numpy()
    return extra


def _sparse_nonzero(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero for a mask that is mostly False, faster: it scans 8 bytes at a time."""
    whole = len(mask) // 8 * 8
    words = np.flatnonzero(mask[:whole].view(np.uint64))
    at = (words[:, None] * 8 + np.arange(8)).ravel()
    return np.concatenate([at[mask[at]], whole + np.flatnonzero(mask[whole:])])


# The characters str.strip() takes for whitespace (Unicode has none past U+3000; a test checks them all).
WHITESPACE = "".join(filter(str.isspace, map(chr, range(0x3001))))


def _re2_literal(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}-" else c for c in text)


# RE2 patterns over lower-cased lines. _HINTS: a line holds one of BOILERPLATE_HINTS (exactly). _MAYBE: a
# superset of the lines BOILERPLATE or _navigation flags (word boundaries dropped, \s and \d widened to
# every non-ASCII character), so that Python's regexes see only the few lines RE2 lets through.
_HINTS = "|".join(map(_re2_literal, BOILERPLATE_HINTS))
_MAYBE = "|".join([
    BOILERPLATE.pattern.replace(r"\b", "").replace(r"\s", r"[\t-\r\x{1c}-\x{20}\x{80}-\x{10FFFF}]")
    .replace(r"\d", r"[0-9\x{80}-\x{10FFFF}]"),
    r"[|•·›»/].*[|•·›»/]",  # _navigation: at least two separators
])
_END_PUNCTUATION = np.array([ord(c) for c in END_PUNCTUATION])
_OPENERS = np.array([ord(c) for c in "(\"'“‘"])


def _line_features(batch: _Batch, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(boilerplate share, non-blank lines, unpunctuated share, repeated share) of the texts `rows`:
    what `_lines` computes, for all their lines at once with Arrow's string kernels and numpy."""
    out = np.zeros((4, len(rows)))
    bad = batch.invalid[rows]
    for k in np.flatnonzero(bad):  # not valid UTF-8: the Python loop
        out[:, k] = _lines(batch.texts[rows[k]])
    good = np.flatnonzero(~bad)
    if len(good):
        out[:, good] = _arrow_lines(batch.arrow(rows[good]))
    return out[0], out[1], out[2], out[3]


def _arrow_lines(texts: pa.Array) -> np.ndarray:
    m = len(texts)
    split = pc.split_pattern(texts, "\n")
    stripped = pc.utf8_trim(split.flatten(), characters=WHITESPACE)
    length = pc.utf8_length(stripped).to_numpy()
    nonblank = length > 0
    owner = np.repeat(np.arange(m), np.diff(_offsets(split)))[nonblank]
    length = length[nonblank]
    lines = stripped.filter(pa.array(nonblank))
    offsets = _offsets(lines)
    ascii = np.diff(offsets) == length
    data = _data(lines)
    count = np.bincount(owner, minlength=m).astype(np.float64)
    total = np.bincount(owner, weights=length, minlength=m)
    total[total == 0] = 1

    # Boilerplate: page numbers, and lines with a hint that BOILERPLATE or _navigation flags, lower-cased
    # as str.lower() does (ascii_lower on ASCII lines, Python on the others).
    flagged = _digit_lines(lines, ascii)
    low = pc.ascii_lower(lines)
    if not ascii.all():
        lowered = [line.lower() for line in lines.filter(pa.array(~ascii)).to_pylist()]
        low = pc.replace_with_mask(low, pa.array(~ascii), pa.array(lowered, low.type))
    hinted = np.flatnonzero(_matches(low, _HINTS))
    maybe = hinted[_matches(low.take(pa.array(hinted, pa.int64())), _MAYBE)]
    for i, line in zip(maybe.tolist(), low.take(pa.array(maybe, pa.int64())).to_pylist()):
        flagged[i] |= bool(BOILERPLATE.search(line) or _navigation(line))
    boilerplate = np.bincount(owner, weights=length * flagged, minlength=m) / total

    # Unpunctuated: the line's last character and the first of the next line (in the same text) past
    # the list marks; -1 for none (the last line, or a next line of marks only), which `in` finds in
    # any string, as in _lines.
    last = _decode(data, _last_char_starts(data, offsets[1:]))
    following = np.full(len(lines), -1, dtype=np.int64)
    if len(lines) > 1:
        trimmed = pc.utf8_ltrim(lines, characters=LINE_MARKERS)
        trimmed_offsets = _offsets(trimmed)
        first = np.where(np.diff(trimmed_offsets) > 0, _decode(_data(trimmed), trimmed_offsets[:-1]), -1)
        same = owner[1:] == owner[:-1]
        following[:-1][same] = first[1:][same]
    (last_alpha, _), (next_alpha, next_lower) = _char_props(last), _char_props(following)
    carries_on = (np.isin(last, _END_PUNCTUATION) | next_lower
                  | last_alpha & (next_alpha | np.isin(following, _OPENERS) | (following < 0)))
    unpunctuated = np.bincount(owner, weights=~carries_on, minlength=m) / np.maximum(count, 1)

    # Repeated: lines equal to an earlier line of the same text (by characters).
    repeated = np.zeros(len(lines), dtype=bool)
    if len(lines):
        ids = pc.dictionary_encode(lines).indices.to_numpy().astype(np.int64)
        key = owner * (int(ids.max()) + 1) + ids
        order = np.argsort(key, kind="stable")
        repeated[order[1:][key[order[1:]] == key[order[:-1]]]] = True
    repeated_share = np.bincount(owner, weights=length * repeated, minlength=m) / total
    return np.stack([boilerplate, count, unpunctuated, repeated_share])


def _offsets(array: pa.Array) -> np.ndarray:
    """The offsets of a (large) list or string array (its len + 1 of them), as int64."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_list(array.type)
    buffer = array.buffers()[1]
    if buffer is None:
        return np.zeros(len(array) + 1, dtype=np.int64)
    offsets = np.frombuffer(buffer, dtype=np.int64 if large else np.int32)
    return offsets[array.offset:array.offset + len(array) + 1].astype(np.int64)


def _data(strings: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of a string array (one 0 byte when it has none)."""
    buffer = strings.buffers()[2]
    return np.frombuffer(buffer, dtype=np.uint8) if buffer is not None and buffer.size else np.zeros(1, np.uint8)


def _matches(lines: pa.Array, pattern: str) -> np.ndarray:
    if not len(lines):
        return np.zeros(0, dtype=bool)
    return pc.match_substring_regex(lines, pattern).to_numpy(zero_copy_only=False)


def _digit_lines(lines: pa.Array, ascii: np.ndarray) -> np.ndarray:
    """Per line: str.isdigit() (page numbers). ASCII lines by Arrow; the others, if every character
    could be a digit, by Python."""
    if not len(lines):
        return np.zeros(0, dtype=bool)
    digits = pc.ascii_is_decimal(lines).to_numpy(zero_copy_only=False).copy()
    other = np.flatnonzero(~ascii)
    if len(other):
        some = lines.take(pa.array(other))
        maybe = other[_matches(some, r"^[0-9\x{80}-\x{10FFFF}]+$")]
        for i, line in zip(maybe.tolist(), lines.take(pa.array(maybe, pa.int64())).to_pylist()):
            digits[i] = line.isdigit()
    return digits


def _last_char_starts(data: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Where the UTF-8 character that ends at each of `ends` starts (back over continuation bytes)."""
    start = ends - 1
    wide = np.flatnonzero(np.take(data, start, mode="clip") >= 0x80)
    for _ in range(3):
        continuation = (np.take(data, start[wide], mode="clip") & 0xC0) == 0x80
        start[wide] -= continuation
    return start


def _decode(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The code point of the UTF-8 character at each of `starts`."""
    cp = np.take(data, starts, mode="clip").astype(np.int64)
    wide = np.flatnonzero(cp >= 0x80)
    if len(wide):
        b0, b1, b2, b3 = (np.take(data, starts[wide] + k, mode="clip").astype(np.int64) for k in range(4))
        b1, b2, b3 = b1 & 0x3F, b2 & 0x3F, b3 & 0x3F
        cp[wide] = np.where(b0 < 0xE0, (b0 & 0x1F) << 6 | b1, np.where(
            b0 < 0xF0, (b0 & 0x0F) << 12 | b1 << 6 | b2, (b0 & 0x07) << 18 | b1 << 12 | b2 << 6 | b3))
    return cp


_ASCII_ALPHA = np.array([chr(c).isalpha() for c in range(128)])
_ASCII_LOWER = np.array([chr(c).islower() for c in range(128)])


def _char_props(code_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(str.isalpha(), str.islower()) of each code point (False for -1): a table for ASCII, Python on
    the distinct others."""
    ascii = np.clip(code_points, 0, 127)
    alpha = _ASCII_ALPHA[ascii] & (code_points >= 0)
    lower = _ASCII_LOWER[ascii] & (code_points >= 0)
    wide = np.flatnonzero(code_points >= 128)
    if len(wide):
        distinct, inverse = np.unique(code_points[wide], return_inverse=True)
        chars = [chr(c) for c in distinct.tolist()]
        alpha[wide] = np.fromiter((c.isalpha() for c in chars), bool, count=len(chars))[inverse]
        lower[wide] = np.fromiter((c.islower() for c in chars), bool, count=len(chars))[inverse]
    return alpha, lower


def _lines(text: str) -> tuple[float, int, float, float]:
    """(boilerplate share, non-blank lines, unpunctuated share, repeated share) of one chunk; the
    shares of boilerplate and repeated lines are by characters. The reference `_arrow_lines` must
    agree with (tests), used for texts Arrow cannot hold (lone surrogates)."""
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    total = sum(map(len, lines)) or 1
    lowered = text.lower()
    boilerplate = sum(len(line) for line in lines if line.isdigit())  # page numbers
    hints = [hint for hint in BOILERPLATE_HINTS if hint in lowered]
    if hints:
        for line in lines:
            low = line.lower()
            if any(hint in low for hint in hints) and (BOILERPLATE.search(low) or _navigation(low)):
                boilerplate += len(line)
    unpunctuated = 0
    for line, following in zip(lines, lines[1:] + [""]):
        # A wrapped line carries on into the next: it starts in lower case, or a word goes on after a letter.
        following = following.lstrip(LINE_MARKERS)
        if not (line.endswith(END_PUNCTUATION) or following[:1].islower()
                or line[-1].isalpha() and (following[:1].isalpha() or following[:1] in "(\"'“‘")):
            unpunctuated += 1
    seen: set[str] = set()
    repeated = 0
    for line in lines:
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return boilerplate / total, len(lines), unpunctuated / max(len(lines), 1), repeated / total


def _navigation(line: str) -> bool:
    """A menu or breadcrumb line: 3+ items of at most 3 words between separators ("Home | About | Contact");
    a Markdown table row (starting with "|") is not one."""
    if line.startswith("|") or len(line) > 200:
        return False
    items = NAVIGATION_SEPARATORS.split(f" {line} ")
    return len(items) >= 3 and all(len(item.split()) <= 3 for item in items)


@cache
def language_identifier():
    """py3langid's identifier with probabilities (its bundled model; loaded once per process, ~2 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_share(identifier, text: str, languages: set[str]) -> float:
    """The probability that `text` (its first LANGUAGE_SAMPLE_CHARS) is in one of `languages`."""
    return sum(p for lang, p in identifier.rank(text[:LANGUAGE_SAMPLE_CHARS]) if lang in languages)
