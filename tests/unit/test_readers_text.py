"""Clean text from messy files: encodings, line ends, forbidden characters, PDF page furniture, HTML stubs."""

from __future__ import annotations

import codecs
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bonito_tasks.contracts import FORBIDDEN_CHARS_PATTERN
from bonito_tasks.extract.readers import (
    MIN_HTML_WORDS,
    Reject,
    decode_text,
    read_csv,
    read_docx,
    read_html,
    read_jsonl,
    read_parquet,
    read_pdf,
    read_text,
)
from bonito_tasks.extract.text import (
    clean_text,
    count_words,
    first_forbidden_char,
    has_forbidden_chars,
    remove_page_furniture,
)
from docfactory import PARAGRAPHS, docx_bytes, parquet_bytes, pdf_bytes, pdf_with_furniture_bytes

# --- the contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\ufffeb", "caf\ufffd", "a\rb", "a\x00b", "a\x0cb", "a\x1bb", "\x08"])
def test_forbidden_characters(text):
    assert has_forbidden_chars(text)
    assert first_forbidden_char(text)[1] == f"U+{ord(next(c for c in text if has_forbidden_chars(c))):04X}"
    assert not has_forbidden_chars(clean_text(text))


def test_allowed_characters_and_the_pattern_works_in_arrow():
    fine = "Tabs\tand\nnew lines, naïve café, 日本語, emoji 🙂, NBSP\u00a0, zero-width\u200bjoiner"
    assert not has_forbidden_chars(fine) and first_forbidden_char(fine) is None
    assert clean_text(fine) == fine
    values = pa.array([fine, "bad\r\n", "soft\ufffehyphen", "lost\ufffd", None])
    assert pc.match_substring_regex(values, FORBIDDEN_CHARS_PATTERN).to_pylist() == [False, True, True, True, None]


def test_clean_text_joins_soft_hyphens_and_normalises_line_ends():
    assert clean_text("manip\ufffeulation and hyper\ufffe\r\nlinks") == "manipulation and hyperlinks"
    assert clean_text("one\r\ntwo\rthree\x0cfour\u2028five\x85six") == "one\ntwo\nthree\nfour\nfive\nsix"
    assert clean_text("bell\x07 escape\x1b[0m nul\x00 del\x7f c1\x9b bom\ufeff") == "bell escape[0m nul del c1 bom"


# --- PDF: soft hyphens, line ends --------------------------------------------------------------------


def test_pdf_soft_hyphens_are_joined_and_no_forbidden_characters_remain():
    body = ("This paragraph is about the manip-\nulation of documents and it keeps going for a while so that "
            "PDFium puts line breaks into the text it extracts from the page.")
    out = read_pdf(pdf_bytes([body, "Second page."]))
    assert "manipulation" in out.text
    assert not has_forbidden_chars(out.text)
    assert "\r" not in out.text and "\ufffe" not in out.text
    assert out.text[out.page_starts[1]:] == "Second page."


# --- line ends and forbidden characters for every reader -------------------------------------------


def test_every_reader_normalises_line_ends_and_drops_control_characters():
    messy = "First line\r\nsecond line\rthird line\x0cfourth\x07 line\x1b with junk"
    want = "First line\nsecond line\nthird line\nfourth line with junk"
    assert read_text(messy.encode()).text == want
    with_nul = messy.replace("\x07", "\x00")  # NUL makes a text file binary; a JSON or Parquet value may hold it
    assert list(read_jsonl(json.dumps({"text": with_nul}).encode() + b"\r\n", "text")) == [want]
    assert list(read_csv(b'id,text\r\n1,"' + messy.encode() + b'"\r\n', "text")) == [want]
    assert list(read_parquet(parquet_bytes({"text": [with_nul, "\x00\r\n"]}), "text")) == [want]
    docx = read_docx(docx_bytes(["Paragraph one\rwith a carriage return."], after="End.")).text
    assert not has_forbidden_chars(docx) and "Paragraph one" in docx
    html = ("<html><body><article><p>" + " ".join(PARAGRAPHS) + "\r\nLine two\r of the article.</p>"
            "</article></body></html>").encode()
    assert not has_forbidden_chars(read_html(html).text)


def test_jsonl_values_may_hold_unicode_line_separators():
    row = json.dumps({"text": "a paragraph\u2028with a line separator"}, ensure_ascii=False).encode()
    assert list(read_jsonl(row + b"\n", "text")) == ["a paragraph\nwith a line separator"]


def test_replacement_characters_are_dropped_or_the_file_rejected():
    few = ("Ten words of perfectly normal text go here. " * 20 + "Then one lost caf\ufffd.").encode()
    text = read_text(few).text
    assert "\ufffd" not in text and "lost caf." in text
    riddled = "\ufffd\ufffd text \ufffd\ufffd\ufffd that was mangled \ufffd\ufffd before it reached us".encode()
    with pytest.raises(Reject) as err:
        read_text(riddled)
    assert err.value.reason == "undecodable_text"


# --- encodings ------------------------------------------------------------------------------------

LATIN1 = "The naïve café owner said: «Voilà, déjà vu!» Größe, Ærø, señor, façade."
CP1252 = "He said “hello” – it’s naïve… the café’s menu costs €5 • œuvre"
CZECH = ("Praha je hlavní a zároveň největší město České republiky. Leží na řece Vltavě a je jedním "
         "z nejkrásnějších měst v Evropě. Každý rok sem přijíždějí miliony turistů, kteří obdivují Karlův "
         "most, Pražský hrad a Staroměstské náměstí. Večer se lidé procházejí po nábřeží.")
JAPANESE = ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
            "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。")


@pytest.mark.parametrize("text, data", [
    ("naïve", "naïve".encode("latin-1")),
    (LATIN1, LATIN1.encode("latin-1")),
    (CP1252, CP1252.encode("cp1252")),
    (CZECH, CZECH.encode("cp1250")),
    ("Dobrý den, jak se máte? Děkuji, mám se dobře.", "Dobrý den, jak se máte? Děkuji, mám se dobře.".encode("cp1250")),
    (JAPANESE, JAPANESE.encode("shift_jis")),
    (CZECH, codecs.BOM_UTF16_LE + CZECH.encode("utf-16-le")),
    (JAPANESE, codecs.BOM_UTF16_BE + JAPANESE.encode("utf-16-be")),
    (LATIN1, codecs.BOM_UTF8 + LATIN1.encode()),
    (LATIN1, LATIN1.encode()),
], ids=["naive-latin1", "latin1", "cp1252", "cp1250-czech", "cp1250-short", "shift-jis", "utf16le-bom",
        "utf16be-bom", "utf8-bom", "utf8"])
def test_decoding_gives_the_exact_original(text, data):
    assert decode_text(data) == text


def test_utf8_with_a_few_cp1252_bytes_decodes_both():
    utf8 = "Le café coûte trois euros. La façade est très belle, naïve et élégante. Où êtes-vous? "
    assert decode_text(utf8.encode() + "Voilà l'été".encode("cp1252")) == utf8 + "Voilà l'été"


def test_latin1_with_a_few_utf8_names_decodes_both():
    # An AUTHORS file kept in latin-1 for years, then edited with a UTF-8 editor (as Erlang/OTP's).
    latin1 = "Björn Gustavsson\nHåkan Mattsson\nLars Björklund\nTobias Fröberg\nKenneth Nyström\n" * 3
    utf8 = "Juan Durán\nHåkan Högfeldt\n"
    assert decode_text(latin1.encode("latin-1") + utf8.encode()) == latin1 + utf8


def test_latin1_names_from_many_languages_stay_latin1():
    # No alphabet holds them all; a DOS code page maps them onto a few Portuguese letters.
    names = "Thanks to Sören Böck, Cédric Pérez, François Jérôme, Xosé Vázquez and Bruno Haible.\n"
    assert decode_text(names.encode("latin-1")) == names


def test_binary_and_broken_boms_are_rejected():
    with pytest.raises(Reject) as err:
        decode_text(b"\x00\x01\x02binary")
    assert err.value.reason == "binary_content"
    with pytest.raises(Reject) as err:
        decode_text(codecs.BOM_UTF16_LE + b"\x00\xd8")  # a lone surrogate
    assert err.value.reason == "undecodable_text"


# --- PDF page furniture ---------------------------------------------------------------------------

BODIES = [
    "Chapter one covers the grant of the licence. The licensor grants you a worldwide, royalty-free, "
    "non-exclusive licence to use, reproduce and adapt the work for any purpose.",
    "Chapter two covers redistribution. You may distribute copies of the work in any medium, with or "
    "without modifications, provided that you keep every notice of the original.",
    "Chapter three covers warranties. The work is provided on an as-is basis, without warranties or "
    "conditions of any kind, either express or implied, including fitness for a purpose.",
    "Chapter four covers liability. In no event shall the licensor be liable for any damages arising "
    "from the use of the work, even if advised of the possibility of such damages.",
    "Chapter five covers termination. The licence ends automatically when you break its terms; it "
    "is reinstated if you cure the breach within thirty days of learning of it.",
]
HEADER = "ACME Licensing Handbook - Edition 2024"


def test_pdf_running_header_and_page_number_footer_are_removed():
    out = read_pdf(pdf_with_furniture_bytes(BODIES, HEADER, footer="Page {page} of {nb}"))
    assert HEADER not in out.text and "Page " not in out.text and " of 5" not in out.text
    assert out.furniture_lines == 2 * len(BODIES)
    assert len(out.page_starts) == len(BODIES)
    for start, body in zip(out.page_starts, BODIES, strict=True):
        assert out.text[start:].startswith(body.split(".")[0])  # each page starts at its first body character
    assert " ".join(out.text.split()) == " ".join(" ".join(b.split()) for b in BODIES)  # the body is intact


def test_pdf_bare_page_numbers_are_removed():
    out = read_pdf(pdf_with_furniture_bytes(BODIES[:3], HEADER, footer="- {page} -"))
    assert out.furniture_lines == 6 and "- 2 -" not in out.text
    assert out.text[out.page_starts[2]:].startswith("Chapter three")


def test_short_pdfs_and_body_lines_are_left_alone():
    two_pages = read_pdf(pdf_with_furniture_bytes(BODIES[:2], HEADER))
    assert two_pages.furniture_lines == 0 and HEADER in two_pages.text
    plain = read_pdf(pdf_bytes(PARAGRAPHS))
    assert plain.furniture_lines == 0 and plain.text == "\n".join(PARAGRAPHS)


@pytest.mark.parametrize("number", ["{n}", "- {n} -", "Page {n} of 9", "page {n}", "{n} / 9", "({n})"])
def test_page_number_forms(number):
    bodies = ["Alpha opens the first page\nand closes it.", "Bravo starts another page\nthat ends here.",
              "Charlie holds the third\nof four pages.", "Delta is the last page\nof the document."]
    pages = [f"{body}\n{number.format(n=i)}" for i, body in enumerate(bodies, 1)]
    result = remove_page_furniture(pages)
    assert result.removed == 4
    assert result.pages == [p.rsplit("\n", 1)[0] for p in pages]


def test_running_headers_that_change_with_the_chapter_are_found_by_their_page_number():
    # A book: title page, then pages printed 1..5 whose header names the chapter (LaTeX, texinfo).
    pages = ["A Book\nby Someone",
             "1 Introduction\nThe first chapter opens here.\n1",
             "Chapter 1: Introduction 2\nIt goes on about things.",
             "3\n2 Methods\nThe second chapter has 2 methods.",
             "4 CHAPTER 2. METHODS\nBoth are explained below.",
             "2.1. THE FIRST METHOD 5\nIt is simple.\n12 steps are needed."]
    result = remove_page_furniture(pages)
    assert result.pages == ["A Book\nby Someone", "1 Introduction\nThe first chapter opens here.",
                            "It goes on about things.", "2 Methods\nThe second chapter has 2 methods.",
                            "Both are explained below.", "It is simple.\n12 steps are needed."]
    assert result.removed == 5


def test_furniture_needs_half_of_the_pages():
    pages = [f"Page body about {word}" for word in ("apples", "pears", "plums", "figs", "dates", "limes")]
    pages[:2] = [f"Draft copy\n{pages[0]}", f"Draft copy\n{pages[1]}"]  # on 2 of 6 pages: kept
    assert remove_page_furniture(pages).removed == 0
    pages[2] = f"Draft copy\n{pages[2]}"  # on 3 of 6: removed
    assert remove_page_furniture(pages).removed == 3


def test_identical_pages_are_not_emptied():
    pages = ["The same notice on every page.\n3"] * 4
    assert remove_page_furniture(pages).pages == pages


# --- HTML stubs -----------------------------------------------------------------------------------

ARTICLE = (
    "The city council met on Tuesday to discuss the new bicycle lanes planned for the old town. "
    "Residents had asked for safer routes to schools after several accidents last winter. The mayor "
    "said the first lanes would open in spring, paid for by the regional transport fund, and that "
    "shop owners would be consulted before any parking spaces were removed from the main streets."
)


def page(body: str, head: str = "") -> bytes:
    return f"<html><head><title>Page</title>{head}</head><body>{body}</body></html>".encode()


@pytest.mark.parametrize("html", [
    page("<p>This content has moved <a href='https://example.com/new'>here</a>.</p>",
         head="<meta http-equiv='refresh' content='0; url=https://example.com/new'>"),
    page("<div class='version'>v2.3.1</div>"),
    page("<main><h1>Not found</h1><p>Sorry, this page does not exist. Go back home.</p></main>"),
], ids=["redirect", "version-sticker", "error-page"])
def test_html_without_main_content_is_rejected(html):
    with pytest.raises(Reject) as err:
        read_html(html)
    assert err.value.reason == "no_main_content"


def test_a_short_real_article_is_kept():
    assert len(ARTICLE.split()) >= 3 * MIN_HTML_WORDS
    out = read_html(page(f"<article><h1>Bicycle lanes</h1><p>{ARTICLE}</p></article>"))
    assert ARTICLE in out.text


def test_words_of_unspaced_scripts_count():
    assert count_words("v2.3.1") == 1 and count_words("This content has moved here.") == 5
    assert count_words(JAPANESE) >= MIN_HTML_WORDS
    out = read_html(page(f"<article><p>{JAPANESE}</p><p>{JAPANESE}</p></article>"))
    assert JAPANESE in out.text
