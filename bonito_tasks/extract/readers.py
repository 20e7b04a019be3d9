"""One reader per format: bytes in, text out. A reader raises Reject for input it cannot use."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bonito_tasks.extract.text import (
    MAX_REPLACEMENT_SHARE,
    DecodeError,
    clean_text,
    count_words,
    remove_page_furniture,
    replacement_share,
)
from bonito_tasks.extract.text import decode_text as _decode_text


class Reject(Exception):
    """A file that cannot become a document; `reason` is a stable label, the message explains."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.content_sha256: str | None = None  # set when the file's bytes were read: the ledger's key


@dataclass(frozen=True)
class Extracted:
    text: str
    page_starts: list[int] | None = None  # char offset where each page begins (PDF)
    furniture_lines: int = 0  # running header, footer and page-number lines removed (PDF)


# An HTML page whose main content has fewer words (runs of letters) than this is a redirect stub,
# a version sticker or an error page, not a document.
MIN_HTML_WORDS = 20


def decode_text(data: bytes) -> str:
    """Decode text in any common encoding (see text.decode_text); binary content is rejected, never guessed at."""
    try:
        return _decode_text(data)
    except DecodeError as err:
        raise Reject(err.reason, err.detail) from err


def check_replacements(raw: str) -> None:
    """Rejects text riddled with U+FFFD (text lost before it reached us) rather than pass it on with
    holes; clean_text drops the few that a usable text may hold."""
    share = replacement_share(raw)
    if share > MAX_REPLACEMENT_SHARE:
        raise Reject("undecodable_text", f"{raw.count(chr(0xFFFD))} replacement characters (U+FFFD), {share:.1%} "
                                         "of the text: it was damaged before it reached us")


def clean(raw: str) -> str:
    """The text as documents hold it: see text.clean_text and check_replacements."""
    check_replacements(raw)
    return clean_text(raw)


def read_text(data: bytes) -> Extracted:
    return Extracted(clean(decode_text(data)))


def read_html(data: bytes) -> Extracted:
    import trafilatura

    extracted = trafilatura.extract(
        decode_text(data), include_comments=False, include_tables=True, favor_recall=True, deduplicate=False
    )
    if not extracted:
        raise Reject("no_main_content", "HTML page has no main content to extract")
    result = clean(extracted)
    words = count_words(result)
    if words < MIN_HTML_WORDS:
        raise Reject("no_main_content", f"HTML main content has {words} word(s), fewer than {MIN_HTML_WORDS} "
                                        f"(a redirect stub or a placeholder page?): {result[:80]!r}")
    return Extracted(result)


def read_pdf(data: bytes) -> Extracted:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as err:
        reason = "encrypted_pdf" if "password" in str(err).lower() else "corrupt_pdf"
        raise Reject(reason, f"PDF cannot be opened: {err}") from err
    raw = []
    try:
        for page in pdf:
            textpage = page.get_textpage()
            raw.append(textpage.get_text_range())
            textpage.close()
            page.close()
    finally:
        pdf.close()
    if not any(p.strip() for p in raw):
        raise Reject("no_text_layer", f"PDF has {len(raw)} page(s) but no text layer (scanned?)")
    check_replacements("\n".join(raw))
    pages = remove_page_furniture([clean_text(p) for p in raw])
    page_starts, offset = [], 0
    for page_text in pages.pages:
        page_starts.append(offset)
        offset += len(page_text) + 1  # pages are joined with "\n"
    return Extracted("\n".join(pages.pages), page_starts, pages.removed)


# A DOCX is a zip: refuse to inflate one whose members would expand past these before parsing.
# zipfile never inflates a member beyond its declared size, so the declared sizes are a bound.
DOCX_MAX_UNCOMPRESSED = 256 * 2**20
DOCX_MAX_RATIO = 200


def check_zip(data: bytes) -> None:
    import zipfile

    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError) as err:
        raise Reject("corrupt_docx", f"DOCX is not a zip archive: {err}") from err
    total = sum(m.file_size for m in members)
    if total > DOCX_MAX_UNCOMPRESSED or total > DOCX_MAX_RATIO * max(len(data), 1):
        raise Reject("zip_bomb", f"DOCX would inflate {len(data)} bytes to {total} bytes "
                                 f"(limits: {DOCX_MAX_UNCOMPRESSED} bytes, ratio {DOCX_MAX_RATIO})")


def read_docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

    check_zip(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as err:  # python-docx raises zipfile, KeyError and lxml errors alike
        raise Reject("corrupt_docx", f"DOCX cannot be opened: {type(err).__name__}: {err}") from err
    blocks = []
    for block in document.iter_inner_content():  # paragraphs and tables in reading order
        if isinstance(block, Table):
            for row in block.rows:
                cells = list(dict.fromkeys(c.text.strip() for c in row.cells))  # merged cells repeat
                blocks.append(" | ".join(cells))
        else:
            blocks.append(block.text)
    return Extracted(clean("\n\n".join(b for b in blocks if b.strip())))


def _missing_column(column: str, found: list[str]) -> Reject:
    return Reject("missing_text_column", f"no text column {column!r}; columns: {', '.join(found) or 'none'}")


def _texts(values: Iterable[Any]) -> Iterator[str]:
    """The cleaned non-blank strings among a column's values (see text.clean_text)."""
    cleaned = (clean_text(v) for v in values if isinstance(v, str))
    return (v for v in cleaned if v.strip())


def read_jsonl(data: bytes, column: str) -> Iterator[str]:
    import json

    first = True
    # JSON Lines end lines with "\n" only: str.splitlines() would also split at U+2028 and other
    # separators that a JSON string may hold unescaped.
    for number, line in enumerate(decode_text(data).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise Reject("corrupt_table", f"line {number} is not JSON: {err}") from err
        if not isinstance(row, dict):
            raise Reject("corrupt_table", f"line {number} is not a JSON object")
        if first and column not in row:
            raise _missing_column(column, list(row))
        first = False
        yield from _texts([row.get(column)])


def read_csv(data: bytes, column: str) -> Iterator[str]:
    import csv

    csv.field_size_limit(2**31 - 1)  # a document is one field; the default limit is 128 KiB
    reader = csv.DictReader(io.StringIO(decode_text(data), newline=""))
    try:
        if column not in (reader.fieldnames or []):
            raise _missing_column(column, list(reader.fieldnames or []))
        yield from _texts(row[column] for row in reader)
    except csv.Error as err:
        raise Reject("corrupt_table", f"CSV line {reader.line_num}: {err}") from err


def read_parquet(data: bytes, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(pa.BufferReader(data))
        if column not in file.schema_arrow.names:
            raise _missing_column(column, file.schema_arrow.names)
        for batch in file.iter_batches(columns=[column], batch_size=1024):
            yield from _texts(batch.column(0).to_pylist())
    except (pa.ArrowException, OSError) as err:
        raise Reject("corrupt_table", f"Parquet cannot be read: {err}") from err


def read_hf_dataset(path: str, column: str) -> Iterator[str]:
    """A folder written by datasets' save_to_disk (memory-mapped; a DatasetDict gives every split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises FileNotFoundError, JSON and Arrow errors alike
        raise Reject("corrupt_table", f"saved dataset cannot be loaded: {type(err).__name__}: {err}") from err
    for split in loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]:
        if column not in split.column_names:
            raise _missing_column(column, split.column_names)
        for chunk in split.data.column(column).chunks:
            yield from _texts(chunk.to_pylist())


READERS: dict[str, tuple[str, Callable[[bytes], Extracted]]] = {
    ".txt": ("text/plain", read_text),
    ".md": ("text/markdown", read_text),
    ".markdown": ("text/markdown", read_text),
    ".html": ("text/html", read_html),
    ".htm": ("text/html", read_html),
    ".pdf": ("application/pdf", read_pdf),
    ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", read_docx),
}

# Tabular formats: every non-blank value of the text column becomes a document.
TABLE_READERS: dict[str, tuple[str, Callable[[bytes, str], Iterator[str]]]] = {
    ".jsonl": ("application/jsonl", read_jsonl),
    ".csv": ("text/csv", read_csv),
    ".parquet": ("application/vnd.apache.parquet", read_parquet),
}
