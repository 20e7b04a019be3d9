"""Clean text for every reader: decoding, line ends, forbidden characters, word counts, PDF page furniture.

The text contract (contracts.FORBIDDEN_CHARS) every reader's output meets: no U+FFFE (PDFium's soft-hyphen mark), no
U+FFFD (the replacement character: text lost before it reached us) and no C0 control character
other than "\\n" and "\\t" (so no "\\r": line ends are "\\n").
"""

from __future__ import annotations

import codecs
import math
import re
from collections import Counter
from dataclasses import dataclass

from bonito_tasks.contracts import FORBIDDEN_CHARS, first_forbidden_char, has_forbidden_chars

__all__ = ["FORBIDDEN_CHARS", "first_forbidden_char", "has_forbidden_chars"]

# PDFium writes U+FFFE where a word was hyphenated at a line end ("manip\ufffeulation"), sometimes
# followed by the line break: drop both to join the word.
_SOFT_HYPHEN_BREAK = re.compile("\ufffe[ \\t]*(?:\\r\\n|\\r|\\n)?")
# Line and page breaks other than "\n": CR LF, lone CR, VT, FF, NEL, LINE and PARAGRAPH SEPARATOR.
_BREAKS = re.compile("\\r\\n|[\\r\\x0b\\x0c\\x85\u2028\u2029]")
# Dropped: the contract's characters plus DEL, C1 controls, U+FFFF and stray byte-order marks.
_DROPPED = re.compile("[\\x00-\\x08\\x0e-\\x1f\\x7f-\\x9f\ufeff\ufffd\ufffe\uffff]")
# Text with more replacement characters than this share was damaged before it reached us.
MAX_REPLACEMENT_SHARE = 0.01


def clean_text(text: str) -> str:
    """Joins soft-hyphenated words, makes every line end "\\n", drops the characters the contract forbids."""
    if "\ufffe" in text:
        text = _SOFT_HYPHEN_BREAK.sub("", text)
    return _DROPPED.sub("", _BREAKS.sub("\n", text))


def replacement_share(text: str) -> float:
    """The share of U+FFFD among the non-space characters."""
    count = text.count("\ufffd")
    return count / max(1, len(text) - sum(text.count(c) for c in " \n\t\r")) if count else 0.0


# ---------------------------------------------------------------------------------------------
# Decoding

# Non-ASCII letters (lower case) of the Latin-script languages that the 8-bit code pages serve.
# Decoded text fits a language when its non-ASCII letters are that language's: cp1250 Czech read as
# cp1252 gives "Pøíliš" (ø and š: no language), read as cp1250 it gives "Příliš" (Czech).
ALPHABETS = {
    "fr": "àâæçéèêëîïôœùûüÿ", "de": "äöüß", "es": "áéíñóúü", "pt": "áâãàçéêíóôõú", "it": "àèéìíîòóùú",
    "ca": "àçéèíïòóúü", "nl": "áéèëïóöü", "da": "æøåéó", "sv": "åäöé", "fi": "äöåšž", "is": "áðéíóúýþæö",
    "et": "äöõüšž", "ga": "áéíóú", "sq": "çë", "cs": "áčďéěíňóřšťúůýž", "sk": "áäčďéíĺľňóôŕšťúýž",
    "pl": "ąćęłńóśźż", "hu": "áéíóöőúüű", "sl": "čšž", "hr": "čćđšž", "ro": "ăâîșțşţ", "tr": "çğıöşüâîû",
    "lt": "ąčęėįšųūž", "lv": "āčēģīķļņšūž",
}
# How much better another decoding must be than cp1252 before it is believed (see decode_text).
ALPHABET_MIN_FIT = 0.95  # the other decoding's letters fit one language at least this well
ALPHABET_MARGIN = 0.05  # and at least this much better than cp1252's letters fit any
MESS_MARGIN = 0.2  # or cp1252's reading is this much messier (charset-normalizer's mess ratio)
MESS_SAMPLE_CHARS = 100_000  # of cp1252's reading, for its mess ratio
FIT_SAMPLE_CHARS = 1_000_000  # of each reading, for its alphabet fit
# The code pages in wide use (charset-normalizer names). Only these can win on letters alone: a
# list of names from many languages (Søren, François, Jérôme) fits no alphabet in cp1252, and some
# DOS or Mac code page may map its few accented letters onto one. Among believable decodings that
# fit equally well these win too: cp1250 over iso8859_16 for Romanian, which differ in one letter.
COMMON_ENCODINGS = frozenset({
    "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258", "cp874", "cp932", "shift_jis",
    "euc_jp", "gb18030", "gbk", "gb2312", "big5", "cp949", "euc_kr", "koi8_r", "koi8_u",
})
# A file that is UTF-8 but for some bytes of another encoding (a changelog edited with tools of both
# kinds, a cp1252 paste): decode it as UTF-8 and the other bytes as cp1252, when it holds at least
# UTF8_MIN_MULTIBYTE well-formed multi-byte sequences and either they are at least twice as many as
# the bad bytes (legacy encodings form few well-formed sequences by chance), or they all decode to
# Latin letters or punctuation and nearly all bad bytes stand alone, as accented letters of cp1252
# do (the lead and trail bytes of CJK encodings come in runs or decode to other scripts).
UTF8_MIN_MULTIBYTE = 2
UTF8_MIN_ALONE = 0.95
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_LATIN_OR_PUNCTUATION = re.compile("[\u00a0-\u024f\u1e00-\u1eff\u2000-\u206f\u20a0-\u20cf\u2100-\u214f]+")
_BAD_RUN = re.compile("\ufffd+")
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


class DecodeError(ValueError):
    """Bytes that are binary or fit no text encoding; `reason` is the Reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _cp1252_fallback(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):  # a decoding handler: encoding errors stay errors
        raise err
    bad = err.object[err.start:err.end]
    return bad.decode("cp1252", errors="ignore") or bad.decode("latin-1"), err.end


codecs.register_error("bonito_cp1252_fallback", _cp1252_fallback)


def alphabet_fit(text: str) -> float:
    """How well the text's non-ASCII letters fit one Latin-script language: the largest share of
    their occurrences that one alphabet of ALPHABETS holds (1.0 when there are none). Letters of
    other scripts never fit: this tells Latin readings of the same bytes apart, and a reading in
    another script has to win on messiness instead."""
    counts: Counter[str] = Counter()
    for ch in set(text):  # distinct characters first: a text holds few, and str.count is fast
        if ch > "\x7f" and ch.isalpha():
            counts[ch.lower()] += text.count(ch)
    total = sum(counts.values())
    if not total:
        return 1.0
    return max(sum(n for ch, n in counts.items() if ch in alphabet) for alphabet in ALPHABETS.values()) / total


def decode_text(data: bytes) -> str:
    """Bytes of a text file as text, preferring the encodings documents really use.

    A byte-order mark decides (UTF-8, UTF-16, UTF-32); else NUL bytes mean binary content; else
    UTF-8 if the bytes are UTF-8 (or UTF-8 but for a few cp1252 bytes); else cp1252 (latin-1's
    superset in practice) unless the evidence for another encoding that charset-normalizer finds is
    strong: cp1252's reading is much messier, or its letters fit no language and the other's do.
    Raises DecodeError("binary_content" | "undecodable_text").
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as err:
                raise DecodeError("undecodable_text", f"bytes do not match their {encoding} byte-order mark: "
                                                      f"{err}") from err
    if b"\x00" in data[:8192]:
        raise DecodeError("binary_content", "file holds binary data (NUL bytes) behind a text extension")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if _mostly_utf8(data):
        return data.decode("utf-8", errors="bonito_cp1252_fallback")
    return _decode_8bit(data)


def _mostly_utf8(data: bytes) -> bool:
    """Whether bytes that are not UTF-8 are UTF-8 text with some bytes of cp1252 (see UTF8_MIN_MULTIBYTE)."""
    sequences = _UTF8_MULTIBYTE.findall(data)
    if len(sequences) < UTF8_MIN_MULTIBYTE:
        return False
    runs = [len(run) for run in _BAD_RUN.findall(data.decode("utf-8", errors="replace"))]
    if len(sequences) >= 2 * sum(runs):
        return True
    latin = _LATIN_OR_PUNCTUATION.fullmatch(b"".join(sequences).decode("utf-8", errors="replace"))
    return bool(latin) and runs.count(1) >= UTF8_MIN_ALONE * len(runs)


def _decode_8bit(data: bytes) -> str:
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    try:
        western: str | None = data.decode("cp1252")
    except UnicodeDecodeError:  # bytes cp1252 leaves undefined (0x81 0x8d 0x8f 0x90 0x9d)
        western = None
    results = [r for r in from_bytes(data) if str(r) != western]
    if western is None:
        if not results:
            raise DecodeError("undecodable_text", "no text encoding fits the bytes")
        return str(results[0])
    if not results:
        return western
    western_mess = mess_ratio(western[:MESS_SAMPLE_CHARS], 1.0)
    western_fit = alphabet_fit(western[:FIT_SAMPLE_CHARS])
    believed = []
    for order, result in enumerate(results):
        text = str(result)
        fit = alphabet_fit(text[:FIT_SAMPLE_CHARS])
        common = not COMMON_ENCODINGS.isdisjoint(result.could_be_from_charset)
        if western_mess - result.chaos >= MESS_MARGIN or (
            common and fit >= ALPHABET_MIN_FIT and fit - western_fit >= ALPHABET_MARGIN
        ):
            believed.append((-fit, not common, order, text))
    return min(believed)[-1] if believed else western


# ---------------------------------------------------------------------------------------------
# Word counts

_LETTERS = re.compile(r"[^\W\d_]+")
# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs):
# a run of their letters counts one word per two characters.
_UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def count_words(text: str) -> int:
    """Words made of letters: "v2.3.1" has one ("v"), "This content has moved here." five."""
    words = 0
    for run in _LETTERS.findall(text):
        unspaced = len(_UNSPACED.findall(run))
        words += max(1, unspaced // 2) if unspaced else 1
    return words


# ---------------------------------------------------------------------------------------------
# PDF page furniture

FURNITURE_EDGE_LINES = 3  # non-blank lines at the top and at the bottom of a page that may be furniture
FURNITURE_MIN_PAGES = 3  # a line is furniture when it recurs on at least this many pages
FURNITURE_MIN_SHARE = 0.5  # and on at least this share of the pages
_PAGE_NUMBER = re.compile(
    r"(?:page|p\.|pg\.?|seite|pagina|página|strana)?\s*[-–—]?\s*\(?#\)?\s*[-–—]?\s*(?:(?:of|/|von|de|z)\s*#)?",
    re.IGNORECASE,
)
_DIGITS = re.compile(r"\d+")
_EDGE_NUMBER = re.compile(r"^\s*(\d{1,4})(?!\S)|(?<!\S)(\d{1,4})\s*$")


@dataclass(frozen=True)
class Defurnished:
    pages: list[str]
    removed: int  # furniture lines removed over all pages


def _furniture_key(line: str) -> str:
    """Lines that differ only in numbers (page numbers, dates) share a key; every bare page number
    ("3", "- 3 -", "Page 3 of 10") has the same one."""
    key = _DIGITS.sub("#", " ".join(line.split())).casefold()
    return "<page number>" if _PAGE_NUMBER.fullmatch(key) else key


def _edge(lines: list[str], indices) -> list[int]:
    """The indices of the first FURNITURE_EDGE_LINES non-blank lines, in the order given."""
    return [i for i in indices if lines[i].strip()][:FURNITURE_EDGE_LINES]


def _numbered_edges(split: list[list[str]], threshold: int) -> set[tuple[int, int]]:
    """(page, line) of the outermost lines that start or end with the page's printed number: a number
    that is the page's index plus one offset on at least `threshold` pages. Catches running headers
    that change with the chapter ("Chapter 2: Parsing 17", "4 CHAPTER 1. INTRODUCTION")."""
    found: list[tuple[int, int, int]] = []  # page, line, printed number minus page index
    for page, lines in enumerate(split):
        nonblank = [i for i, line in enumerate(lines) if line.strip()]
        for i in sorted({nonblank[0], nonblank[-1]}) if nonblank else ():
            if edge_number := _EDGE_NUMBER.search(lines[i]):
                found += [(page, i, int(n) - page) for n in edge_number.groups() if n]
    pages_by_offset = Counter(offset for _, offset in {(page, offset) for page, _, offset in found})
    if not pages_by_offset:
        return set()
    offset, pages = pages_by_offset.most_common(1)[0]
    if pages < threshold:
        return set()
    numbered: dict[int, list[int]] = {}
    for page, i, o in found:
        if o == offset:
            numbered.setdefault(page, []).append(i)
    edges: set[tuple[int, int]] = set()
    for page, indices in numbered.items():
        # "1 Introduction" above a bare "1" on the first page of a chapter: only the bare number is furniture
        bare = [i for i in indices if _furniture_key(split[page][i]) == "<page number>"]
        edges.update((page, i) for i in (bare if bare and len(indices) > 1 else indices))
    return edges


def remove_page_furniture(pages: list[str]) -> Defurnished:
    """Removes running headers, footers and page numbers: lines at the top or bottom of a page that
    recur (numbers aside) on at least FURNITURE_MIN_SHARE of the pages and FURNITURE_MIN_PAGES pages,
    and a page's outermost lines that start or end with its printed page number (see _numbered_edges).
    Removal runs from the page edge inwards and stops at the first line that is not furniture;
    blank lines next to removed furniture go too, so each page starts with its first body line.
    Pages that would all end up empty (the same text on every page) are left as they are."""
    threshold = max(FURNITURE_MIN_PAGES, math.ceil(FURNITURE_MIN_SHARE * len(pages)))
    if len(pages) < threshold:
        return Defurnished(pages, 0)
    split = [page.split("\n") for page in pages]
    seen_on: Counter[str] = Counter()
    for lines in split:
        edge = set(_edge(lines, range(len(lines)))) | set(_edge(lines, range(len(lines) - 1, -1, -1)))
        seen_on.update({_furniture_key(lines[i]) for i in edge})
    furniture = {key for key, n in seen_on.items() if n >= threshold}
    numbered = _numbered_edges(split, threshold)
    if not furniture and not numbered:
        return Defurnished(pages, 0)

    def is_furniture(page: int, i: int) -> bool:
        return (page, i) in numbered or _furniture_key(split[page][i]) in furniture

    out, removed = [], 0
    for number, (page, lines) in enumerate(zip(pages, split, strict=True)):
        start, end = 0, len(lines)
        for i in _edge(lines, range(len(lines))):
            if not is_furniture(number, i):
                break
            start, removed = i + 1, removed + 1
        for i in _edge(lines, range(len(lines) - 1, start - 1, -1)):
            if not is_furniture(number, i):
                break
            end, removed = i, removed + 1
        if (start, end) == (0, len(lines)):
            out.append(page)
            continue
        kept = lines[start:end]
        if start:  # blank lines between the removed header and the body
            while kept and not kept[0].strip():
                kept.pop(0)
        if end < len(lines):
            while kept and not kept[-1].strip():
                kept.pop()
        out.append("\n".join(kept))
    if not any(page.strip() for page in out):  # identical pages: the "furniture" is the document
        return Defurnished(pages, 0)
    return Defurnished(out, removed)
