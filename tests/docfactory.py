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


def docx_bytes(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    document.add_paragraph("After the table.")
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
