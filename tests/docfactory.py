"""Builds small documents of every supported format for tests."""

from __future__ import annotations

import io
from pathlib import Path

PARAGRAPHS = [
    "The licensor grants you a worldwide, royalty-free, non-exclusive licence to use the work.",
    "You may reproduce and distribute copies of the work in any medium, with or without modifications.",
    "The work is provided on an as-is basis, without warranties or conditions of any kind.",
]


def pdf_bytes(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def docx_bytes(paragraphs: list[str], table: list[list[str]] | None = None, after: str = "After the table.") -> bytes:
    import docx

    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    document.add_paragraph(after)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def html_bytes(paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        "<html><head><title>Licence</title><style>p {color: red}</style>"
        "<script>var tracking = 'SCRIPT_TEXT';</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<main><article><h1>Licence terms</h1>{body}</article></main>"
        "<footer>Copyright footer</footer></body></html>"
    ).encode()


def write_good_corpus(folder: Path) -> dict[str, bytes]:
    """One good file per format; returns name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "plain.txt": "\n\n".join(PARAGRAPHS).encode(),
        "notes.md": ("# Notes\n\n" + "\n\n".join(PARAGRAPHS[:2])).encode(),
        "latin1.txt": "Le café coûte trois euros. Voilà une phrase française à l'été.".encode("latin-1"),
        "page.html": html_bytes(PARAGRAPHS),
        "report.pdf": pdf_bytes(PARAGRAPHS[:2] + [PARAGRAPHS[2]]),
        "contract.docx": docx_bytes(PARAGRAPHS[:2], [["Term", "Value"], ["Fee", "none"]]),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def encrypted_pdf_bytes(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="user")
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def zip_bytes(members: dict[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def parquet_bytes(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def write_bad_corpus(folder: Path, outside: Path) -> dict[str, str]:
    """Files that must each be rejected; returns relative path -> expected reason.
    `outside` is a folder beyond the source root that a symlink points into."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    good_pdf = pdf_bytes(PARAGRAPHS)
    good_docx = docx_bytes(PARAGRAPHS)
    files: dict[str, tuple[bytes, str]] = {
        "bad/junk.pdf": (b"%PDF-1.4 this is not really a pdf", "corrupt_pdf"),
        "bad/truncated.pdf": (good_pdf[: len(good_pdf) // 2], "corrupt_pdf"),
        "bad/encrypted.pdf": (encrypted_pdf_bytes(PARAGRAPHS[0]), "encrypted_pdf"),
        "bad/scanned.pdf": (pdf_bytes(["", ""]), "no_text_layer"),
        "bad/not_a_zip.docx": (b"PK this is no zip archive", "corrupt_docx"),
        "bad/truncated.docx": (good_docx[: len(good_docx) // 2], "corrupt_docx"),
        "bad/zip_not_docx.docx": (zip_bytes({"readme.txt": b"a zip, but no Word document"}), "corrupt_docx"),
        "bad/bomb.docx": (zip_bytes({"word/document.xml": b"<" + b"a" * 50_000_000}), "zip_bomb"),
        "bad/empty.txt": (b"", "empty_file"),
        "bad/blank.md": (b" \n\t\n  \r\n", "empty_file"),
        "bad/binary.txt": (b"\x00\x01\x02\x03binary" * 100, "binary_content"),
        "bad/png.md": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary_content"),
        "bad/binary.html": (b"\x00\x00\x00\x18ftypmp42" * 20, "binary_content"),
        "bad/huge.txt": (b"All work and no play. " * 20_000, "too_large"),
        "bad/image.png": (b"\x89PNG\r\n\x1a\n", "unsupported_format"),
        "bad/no_extension": (b"some text without an extension", "unsupported_format"),
        "bad/script_only.html": (b"<html><head><style>p {}</style><script>var a = 'only a script';</script>"
                                 b"</head><body><script>render();</script></body></html>", "no_main_content"),
        "bad/empty_doc.docx": (docx_bytes([], after="   "), "no_text"),
        "bad/bad_line.jsonl": (b'{"text": "fine row"}\n{not json\n', "corrupt_table"),
        "bad/no_column.csv": (b"title,body\nA,Some body text\n", "missing_text_column"),
        "bad/no_column.jsonl": (json.dumps({"body": "text under another name"}).encode() + b"\n",
                                "missing_text_column"),
        "bad/corrupt.parquet": (b"PAR1 not really parquet PAR1", "corrupt_table"),
        "bad/null_texts.parquet": (parquet_bytes({"text": [None, "", "   "]}), "no_text"),
    }
    for name, (data, _) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected = {name: reason for name, (_, reason) in files.items()}
    (outside / "secret.txt").write_text("A file outside the source root that must never be read.")
    (folder / "bad/escape.txt").symlink_to(outside / "secret.txt")
    expected["bad/escape.txt"] = "symlink_escape"
    (folder / "bad/escape_dir").symlink_to(outside)
    expected["bad/escape_dir"] = "symlink_escape"
    (folder / "bad/dangling.txt").symlink_to(folder / "bad/does-not-exist.txt")
    expected["bad/dangling.txt"] = "unreadable"
    return expected


def pdf_with_furniture_bytes(pages: list[str], header: str, footer: str = "Page {page} of {nb}") -> bytes:
    """A PDF whose every page carries a running header and a footer (`{page}` is the page number,
    `{nb}` the page count), around the body text of `pages`."""
    from fpdf import FPDF

    class Document(FPDF):
        def header(self):
            self.set_font("helvetica", size=9)
            self.cell(0, 8, header, align="C")
            self.ln(12)

        def footer(self):
            self.set_y(-15)
            self.set_font("helvetica", size=9)
            self.cell(0, 10, footer.format(page=self.page_no(), nb="{nb}"), align="C")

    pdf = Document()
    for body in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, body)
    return bytes(pdf.output())
