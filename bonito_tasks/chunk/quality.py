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
chunks at once with numpy over the UTF-8 bytes (plus one short Python pass over the lines), which
is what makes them fast enough to run on every chunk (benchmarks/quality_bench.py).

Language identification: py3langid (BSD-3), a maintained fork of langid.py that ships its model
in the wheel (4.5 MB; 97 languages, nothing is downloaded at run time): about 0.3 ms for the
first LANGUAGE_SAMPLE_CHARS of a chunk. lingua-language-detector (Apache-2.0) is more accurate
on very short text, but its wheel is 96 MB, its models take 1.4 GB of memory and 40 s to load
with every language, and it is about 5x slower per chunk here; chunks are long enough for langid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from bonito_tasks.config import RunConfig
from bonito_tasks.minhash import Shingles, shingles

REASONS = ("too_few_words", "digit_ratio", "symbol_ratio", "mean_word_length", "boilerplate",
           "unpunctuated_lines", "repeated_lines", "repeated_ngrams", "language")
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
# A line can match BOILERPLATE (or be navigation) only if it holds one of these: checked first, on the
# whole chunk, since `in` is far faster than the regex.
BOILERPLATE_HINTS = ("cookie", "privacy ", "terms of ", "rights reserved", "©", "(c)", "copyright", "click here",
                     " more", "subscribe", "newsletter", "sign up", "sign in", "log in", "login", "create an account",
                     "follow us", "share this", "share on", "like us on", "skip to", "back to top", "javascript",
                     "your browser", "powered by", "contact us", "about us", "sitemap", "lorem ipsum", "page ",
                     "accept all", "manage preferences", "advertisement", " | ", " • ", " · ", " › ", " » ", " / ")
NAVIGATION_SEPARATORS = re.compile(r"\s[|•·›»/]\s")  # "Home | About | Contact", breadcrumbs
LINE_MARKERS = ">*-#•·+ \t"  # quote, list and heading marks a line may start with (Markdown, lists)


@dataclass(frozen=True)
class Thresholds:
    """The filters' thresholds (RunConfig's quality_* params)."""

    min_words: int = 5
    max_digit_ratio: float = 0.25
    max_symbol_ratio: float = 0.1
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 12.0
    max_boilerplate_lines: float = 0.4
    max_unpunctuated_lines: float = 0.85
    max_repeated_lines: float = 0.3
    max_repeated_ngrams: float = 0.3
    languages: tuple[str, ...] = ()  # empty: any language

    @classmethod
    def from_config(cls, config: RunConfig) -> Thresholds:
        return cls(
            min_words=config.quality_min_words, max_digit_ratio=config.quality_max_digit_ratio,
            max_symbol_ratio=config.quality_max_symbol_ratio,
            min_mean_word_length=config.quality_min_mean_word_length,
            max_mean_word_length=config.quality_max_mean_word_length,
            max_boilerplate_lines=config.quality_max_boilerplate_lines,
            max_unpunctuated_lines=config.quality_max_unpunctuated_lines,
            max_repeated_lines=config.quality_max_repeated_lines,
            max_repeated_ngrams=config.quality_max_repeated_ngrams,
            languages=tuple(config.quality_languages),
        )


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
    """Measure a batch of chunks: byte classes with numpy over the batch, lines in Python."""
    n = len(texts)
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter(map(len, encoded), np.int64, count=n)
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])

    if not len(data):
        zeros = np.zeros(n)
        return Features(zeros, zeros, zeros, zeros, zeros.astype(bool), zeros, zeros, zeros, zeros, zeros)
    classes = _CLASS[data]
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths + 1)[: len(data)]  # the text of each byte
    counts = np.bincount(owner * 8 + classes, minlength=8 * n).reshape(n, 8)
    counts[:-1, SPACE] -= 1  # the joining newline after each text but the last
    chars = lengths - counts[:, CONTINUATION]
    nonspace = np.maximum(chars - counts[:, SPACE], 1)
    digits, symbols = counts[:, DIGIT], counts[:, SYMBOL].copy()
    unspaced = counts[:, UNSPACED] > UNSPACED_SHARE * nonspace
    # Words: runs of letter bytes; their length in characters.
    in_word = _IN_WORD[classes]
    word_starts = np.flatnonzero(in_word & ~np.concatenate(([False], in_word[:-1])))
    words = np.bincount(owner[word_starts], minlength=n)
    word_chars = counts[:, LETTER] + counts[:, LEAD] + counts[:, UNSPACED]
    mean_word_length = word_chars / np.maximum(words, 1)

    boilerplate = np.zeros(n)
    lines = np.zeros(n)
    unpunctuated = np.zeros(n)
    repeated = np.zeros(n)
    for i, text in enumerate(texts):
        if not text.isascii():
            symbols[i] += len(NON_ASCII_SYMBOLS.findall(text))
        if "..." in text or "…" in text or ". . ." in text:
            symbols[i] += sum(len(m) for m in DOT_LEADERS.findall(text))
        boilerplate[i], lines[i], unpunctuated[i], repeated[i] = _lines(text)
    if shingled is None:
        shingled = shingles(texts)
    return Features(
        words=words, mean_word_length=mean_word_length, digit_ratio=digits / nonspace,
        symbol_ratio=symbols / nonspace, unspaced=unspaced, boilerplate=boilerplate, lines=lines,
        unpunctuated_lines=unpunctuated, repeated_lines=repeated, repeated_ngrams=shingled.duplicate_share(),
    )


def _lines(text: str) -> tuple[float, int, float, float]:
    """(boilerplate share, non-blank lines, unpunctuated share, repeated share) of one chunk; the
    shares of boilerplate and repeated lines are by characters."""
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


def assess(texts: list[str], thresholds: Thresholds, shingled: Shingles | None = None) -> list[str | None]:
    """Per chunk: the first filter it fails (a REASONS entry), or None to keep it."""
    f = features(texts, shingled)
    word_based = ~f.unspaced
    failed = {
        "too_few_words": word_based & (f.words < thresholds.min_words),
        "digit_ratio": f.digit_ratio > thresholds.max_digit_ratio,
        "symbol_ratio": f.symbol_ratio > thresholds.max_symbol_ratio,
        "mean_word_length": word_based & ((f.mean_word_length < thresholds.min_mean_word_length)
                                          | (f.mean_word_length > thresholds.max_mean_word_length)),
        "boilerplate": f.boilerplate > thresholds.max_boilerplate_lines,
        "unpunctuated_lines": (f.lines >= MIN_LINES) & (f.unpunctuated_lines > thresholds.max_unpunctuated_lines),
        "repeated_lines": f.repeated_lines > thresholds.max_repeated_lines,
        "repeated_ngrams": f.repeated_ngrams > thresholds.max_repeated_ngrams,
    }
    reasons: list[str | None] = [None] * len(texts)
    for reason in REASONS[:-1]:
        for i in np.flatnonzero(failed[reason]):
            if reasons[i] is None:
                reasons[i] = reason
    if thresholds.languages:
        identifier = language_identifier()
        wanted = set(thresholds.languages)
        for i, text in enumerate(texts):
            if reasons[i] is None and language_share(identifier, text, wanted) < 0.5:
                reasons[i] = "language"
    return reasons


@cache
def language_identifier():
    """py3langid's identifier with probabilities (its bundled model; loaded once per process, ~2 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    return sorted(language_identifier().labels)


def language_share(identifier, text: str, languages: set[str]) -> float:
    """The probability that `text` (its first LANGUAGE_SAMPLE_CHARS) is in one of `languages`."""
    return sum(p for lang, p in identifier.rank(text[:LANGUAGE_SAMPLE_CHARS]) if lang in languages)
