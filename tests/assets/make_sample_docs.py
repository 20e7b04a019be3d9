"""Generate the sample documents in tests/assets/sample_docs/ from licence texts.

Deterministic: the same licence texts and library versions give byte-identical files.
The licence texts come from Debian's base-files package (/usr/share/common-licenses);
their wording is reproduced verbatim, only the layout/markup changes (see SOURCES.md).

    PYTHONPATH=. python tests/assets/make_sample_docs.py

Needs fpdf2 (PDF) and python-docx (DOCX).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

LICENCE_DIR = Path("/usr/share/common-licenses")
ASSETS = Path(__file__).resolve().parent
OUT_DIR = ASSETS / "sample_docs"

# output file -> licence file in LICENCE_DIR (a different licence per file)
DOCS: dict[str, str] = {
    "apache-2.0.txt": "Apache-2.0",
    "mpl-2.0.md": "MPL-2.0",
    "cc0-1.0.html": "CC0-1.0",
    "gpl-3.0.pdf": "GPL-3",
    "lgpl-3.0.docx": "LGPL-3",
}
BROKEN_PDF = "broken.pdf"

FIXED_DATE = dt.datetime(2024, 1, 1, 0, 0, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Block:
    kind: str  # "title", "heading", "subheading", "para", "quote"
    lines: tuple[str, ...]  # the block's lines, dedented, hard line breaks kept

    @property
    def text(self) -> str:
        """The block reflowed into one line (what a word processor / browser would show)."""
        return " ".join(" ".join(self.lines).split())


def read_licence(name: str) -> str:
    return (LICENCE_DIR / name).read_text(encoding="utf-8")


_LIST_ITEM = re.compile(r"^\s*(\([a-z]\)|[a-z]\.)\s")
_UNDERLINE = re.compile(r"^\s*([=-])\1+\s*$")


def _unbox(text: str) -> tuple[str, set[int]]:
    """MPL-2.0 draws two sections in a box of asterisks: drop the box, remember which lines it held."""
    out, boxed = [], set()
    for line in text.splitlines():
        s = line.rstrip()
        if re.fullmatch(r"\*{10,}", s):
            out.append("")
            continue
        m = re.fullmatch(r"\*(.*)\*", s)
        if m and len(s) > 40:
            boxed.add(len(out))
            out.append(m.group(1)[2:].rstrip() if m.group(1).startswith("  ") else m.group(1).strip())
            continue
        out.append(s)
    return "\n".join(out), boxed


def licence_blocks(name: str) -> list[Block]:
    """Split a licence text into headings and paragraphs (blank-line separated blocks)."""
    text, boxed = _unbox(read_licence(name))
    raw_blocks: list[tuple[list[str], bool]] = []
    cur: list[str] = []
    cur_boxed = False
    for i, line in enumerate(text.splitlines() + [""]):
        if line.strip():
            if not cur:
                cur_boxed = i in boxed
            cur.append(line.rstrip())
        elif cur:
            raw_blocks.append((cur, cur_boxed))
            cur = []
    blocks: list[Block] = []
    for n, (lines, is_boxed) in enumerate(raw_blocks):
        stripped = [ln.strip() for ln in lines]
        if len(stripped) == 2 and _UNDERLINE.match(stripped[1]):  # setext heading: '=' title, '-' section
            blocks.append(Block("title" if stripped[1][0] == "=" else "heading", (stripped[0],)))
            continue
        if n == 0:
            blocks.append(Block("title", (stripped[0],)))
            if len(stripped) > 1:
                blocks.append(Block("para", tuple(stripped[1:])))
            continue
        if len(stripped) >= 2 and _UNDERLINE.match(stripped[1]):  # boxed heading + text
            blocks.append(Block("heading", (stripped[0],)))
            stripped = stripped[2:]
        if (
            len(stripped) == 1
            and len(stripped[0]) <= 70
            and stripped[0][-1] not in ",;:"
            and (stripped[0][0].isupper() or stripped[0][0].isdigit())
            and (not stripped[0].endswith(".") or stripped[0][0].isdigit())
        ):
            blocks.append(Block("subheading" if re.match(r"^\d+\.\d+\.", stripped[0]) else "heading", (stripped[0],)))
            continue
        # split lettered list items ("a. ...", "(b) ...") that start a line into their own paragraphs
        para: list[str] = []
        for ln in stripped:
            if para and _LIST_ITEM.match(ln):
                blocks.append(Block("quote" if is_boxed else "para", tuple(para)))
                para = []
            para.append(ln)
        if para:
            blocks.append(Block("quote" if is_boxed else "para", tuple(para)))
    return blocks


def licence_paragraphs(name: str) -> list[str]:
    """Reflowed paragraphs (headings included as their own short paragraphs)."""
    return [b.text for b in licence_blocks(name) if b.text]


# ---------------------------------------------------------------- writers


def write_txt(path: Path, licence: str) -> None:
    path.write_text(read_licence(licence), encoding="utf-8")  # verbatim copy


def write_md(path: Path, licence: str) -> None:
    out: list[str] = []
    for b in licence_blocks(licence):
        if b.kind == "title":
            out.append("# " + b.text)
        elif b.kind == "heading":
            out.append("## " + b.text)
        elif b.kind == "subheading":
            out.append("### " + b.text)
        elif b.kind == "quote":
            out.append("\n".join("> " + ln for ln in b.lines))
        else:
            lines = list(b.lines)
            # MPL definitions: '1.2. "Contributor Version"' on its own line, then 'means ...'
            if len(lines) > 1 and re.match(r'^\d+\.\d+\. ".*"', lines[0]) and lines[1].startswith("means"):
                lines[0] = f"**{lines[0]}**"
            out.append("\n".join(lines))
    path.write_text("\n\n".join(out) + "\n", encoding="utf-8")


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} | Open Licences Portal</title>
<link rel="stylesheet" href="/static/site.css">
<style>
  body {{ font-family: Georgia, serif; margin: 0; color: #222; }}
  header, footer {{ background: #1d3557; color: #fff; padding: 0.5em 1em; }}
  nav ul {{ list-style: none; display: flex; gap: 1em; margin: 0; padding: 0; }}
  nav a {{ color: #fff; text-decoration: none; }}
  .sidebar {{ float: right; width: 14em; font-size: 0.9em; background: #f1faee; padding: 1em; }}
  main {{ max-width: 42em; margin: 2em auto; line-height: 1.5; }}
  .cookie-banner {{ position: fixed; bottom: 0; width: 100%; background: #e63946; color: #fff; }}
</style>
<script>
  window.dataLayer = window.dataLayer || [];
  function gtag() {{ dataLayer.push(arguments); }}
  gtag("js", new Date());
  gtag("config", "UA-00000000-0");
</script>
</head>
<body>
<header>
  <div class="logo">Open Licences Portal</div>
  <nav aria-label="Main">
    <ul>
      <li><a href="/">Home</a></li>
      <li><a href="/licences/">Licences</a></li>
      <li><a href="/faq/">FAQ</a></li>
      <li><a href="/about/">About us</a></li>
      <li><a href="/contact/">Contact</a></li>
    </ul>
  </nav>
  <form class="search" action="/search"><input name="q" placeholder="Search licences"><button>Search</button></form>
</header>
<div class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/licences/">Licences</a> &rsaquo; {title}</div>
<aside class="sidebar">
  <h2>Related licences</h2>
  <ul>
    <li><a href="/licences/cc-by-4.0/">CC BY 4.0</a></li>
    <li><a href="/licences/cc-by-sa-4.0/">CC BY-SA 4.0</a></li>
    <li><a href="/licences/unlicense/">The Unlicense</a></li>
  </ul>
  <p>Subscribe to our newsletter for licence news every month.</p>
</aside>
<main>
<article>
"""

_HTML_TAIL = """</article>
</main>
<div class="cookie-banner" id="cookies">
  We use cookies to improve your experience on this site. <button onclick="acceptCookies()">Accept all</button>
</div>
<footer>
  <p>&copy; 2024 Open Licences Portal. All rights reserved. <a href="/privacy/">Privacy policy</a> &middot; <a href="/terms/">Terms of use</a></p>
  <p>Follow us: <a href="#">Mastodon</a> &middot; <a href="#">RSS</a></p>
</footer>
<script>
  function acceptCookies() {
    document.getElementById("cookies").style.display = "none";
    document.cookie = "consent=1; path=/; max-age=31536000";
  }
</script>
</body>
</html>
"""


def write_html(path: Path, licence: str) -> None:
    blocks = licence_blocks(licence)
    title = blocks[0].text
    body: list[str] = []
    tags = {"title": "h1", "heading": "h2", "subheading": "h3", "para": "p", "quote": "blockquote"}
    for b in blocks:
        tag = tags[b.kind]
        body.append(f"<{tag}>{html.escape(b.text, quote=False)}</{tag}>")
    doc = _HTML_HEAD.format(title=html.escape(title)) + "\n".join(body) + "\n" + _HTML_TAIL
    path.write_text(doc, encoding="utf-8")


def write_pdf(path: Path, licence: str) -> None:
    from fpdf import FPDF

    blocks = licence_blocks(licence)
    title = blocks[0].text

    class PDF(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("Helvetica", "I", 8)
            self.cell(0, 8, f"{title} - page {self.page_no()}", align="C")

    pdf = PDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(title)
    pdf.set_author("Free Software Foundation, Inc.")
    pdf.set_creator("tests/assets/make_sample_docs.py")
    pdf.set_producer("fpdf2")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    sizes = {"title": 16, "heading": 12, "subheading": 11}
    for b in blocks:
        if b.kind in sizes:
            pdf.set_font("Helvetica", "B", sizes[b.kind])
            pdf.multi_cell(0, 7, b.text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        else:
            pdf.set_font("Helvetica", "", 10)
            pdf.multi_cell(0, 5, b.text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    pdf.output(str(path))


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite a zip (docx) with fixed timestamps and a fixed member order so output is byte-stable."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            dst.writestr(zi, src.read(info.filename))
    return buf.getvalue()


def write_docx(path: Path, licence: str) -> None:
    import docx

    blocks = licence_blocks(licence)
    d = docx.Document()
    cp = d.core_properties
    cp.title = blocks[0].text
    cp.author = "Free Software Foundation, Inc."
    cp.last_modified_by = "tests/assets/make_sample_docs.py"
    cp.created = FIXED_DATE.replace(tzinfo=None)
    cp.modified = FIXED_DATE.replace(tzinfo=None)
    cp.last_printed = FIXED_DATE.replace(tzinfo=None)
    cp.revision = 1
    d.add_heading(blocks[0].text, 0)
    # a small document-information table (our own metadata, not licence text)
    rows = [
        ("Field", "Value"),
        ("Licence", "GNU Lesser General Public License"),
        ("Version", "3, 29 June 2007"),
        ("SPDX identifier", "LGPL-3.0-only"),
        ("Publisher", "Free Software Foundation, Inc."),
    ]
    table = d.add_table(rows=len(rows), cols=2)
    table.style = "Table Grid"
    for r, (k, v) in enumerate(rows):
        table.cell(r, 0).text = k
        table.cell(r, 1).text = v
    for b in blocks[1:]:
        if b.kind == "title":
            d.add_heading(b.text, 1)
        elif b.kind == "heading":
            d.add_heading(b.text, 1)
        elif b.kind == "subheading":
            d.add_heading(b.text, 2)
        elif b.kind == "quote":
            d.add_paragraph(b.text, style="Quote")
        else:
            d.add_paragraph(b.text)
    buf = io.BytesIO()
    d.save(buf)
    path.write_bytes(_normalise_zip(buf.getvalue()))


def write_broken_pdf(path: Path) -> None:
    # Starts like a PDF but has no objects, no xref table and no trailer: every PDF reader rejects it.
    path.write_bytes(
        b"%PDF-1.7\n"
        b"% This file is deliberately corrupt: it is a truncated PDF with no objects,\n"
        b"% no cross-reference table and no trailer. It exists so that tests can check\n"
        b"% that unreadable documents are rejected instead of crashing the pipeline.\n"
        + bytes(range(256))
        + b"\n"
    )


WRITERS = {".txt": write_txt, ".md": write_md, ".html": write_html, ".pdf": write_pdf, ".docx": write_docx}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for fname, licence in DOCS.items():
        path = OUT_DIR / fname
        WRITERS[path.suffix](path, licence)
        print(f"wrote {path.relative_to(ASSETS.parent.parent)} ({path.stat().st_size} bytes) from {licence}")
    write_broken_pdf(OUT_DIR / BROKEN_PDF)
    print(f"wrote {BROKEN_PDF}")


if __name__ == "__main__":
    main()
