"""One reader per format: bytes in, text out. A reader raises Reject for input it cannot use."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable


class Reject(Exception):
    """A file that cannot become a document; `reason` is a stable label, the message explains."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Extracted:
    text: str
    page_starts: list[int] | None = None  # char offset where each page begins (PDF)


def decode_text(data: bytes) -> str:
    """Decode text in any common encoding; binary content is rejected, never guessed at."""
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Reject("binary_content", "file holds binary data (NUL bytes) behind a text extension")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise Reject("undecodable_text", "no text encoding fits the bytes")
    return str(best)


def read_text(data: bytes) -> Extracted:
    return Extracted(decode_text(data))


def read_html(data: bytes) -> Extracted:
    import trafilatura

    text = trafilatura.extract(
        decode_text(data), include_comments=False, include_tables=True, favor_recall=True, deduplicate=False
    )
    if not text:
        raise Reject("no_main_content", "HTML page has no main content to extract")
    return Extracted(text)


def read_pdf(data: bytes) -> Extracted:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as err:
        reason = "encrypted_pdf" if "password" in str(err).lower() else "corrupt_pdf"
        raise Reject(reason, f"PDF cannot be opened: {err}") from err
    pages, page_starts, offset = [], [], 0
    try:
        for page in pdf:
            textpage = page.get_textpage()
            text = textpage.get_text_range().replace("\r\n", "\n")
            textpage.close()
            page.close()
            page_starts.append(offset)
            pages.append(text)
            offset += len(text) + 1  # pages are joined with "\n"
    finally:
        pdf.close()
    if not any(p.strip() for p in pages):
        raise Reject("no_text_layer", f"PDF has {len(pages)} page(s) but no text layer (scanned?)")
    return Extracted("\n".join(pages), page_starts)


def read_docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

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
    return Extracted("\n\n".join(b for b in blocks if b.strip()))


READERS: dict[str, tuple[str, Callable[[bytes], Extracted]]] = {
    ".txt": ("text/plain", read_text),
    ".md": ("text/markdown", read_text),
    ".markdown": ("text/markdown", read_text),
    ".html": ("text/html", read_html),
    ".htm": ("text/html", read_html),
    ".pdf": ("application/pdf", read_pdf),
    ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", read_docx),
}
