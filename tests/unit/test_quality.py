"""Chunk quality filters (bonito_tasks/chunk/quality.py): a keep and a drop case for each filter,
the defaults on the bundled samples through the real extract and chunk stages, and the junk the
defaults must drop (a table of numbers, a table of contents, a page of boilerplate)."""

import random
import re
import sys

import numpy as np
import pytest

from bonito_tasks.chunk import chunk
from bonito_tasks.chunk.quality import (
    DOT_LEADERS,
    NON_ASCII_SYMBOLS,
    REASONS,
    WHITESPACE,
    Thresholds,
    _Batch,
    _line_features,
    _lines,
    assess,
    features,
)
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import extract
from bonito_tasks.store import LocalStore
from conftest import SAMPLE_DOCS, make_config

RUN = RunRef(dag_id="d", run_id="r1")
DEFAULTS = Thresholds()

PROSE = (
    "The river rises in the northern hills and flows south through farmland for about two hundred "
    "kilometres. Its valley has been settled since the Bronze Age, and several of the older villages still "
    "keep their medieval street plans.\nIn the nineteenth century the lower reaches were canalised, which "
    "allowed barges to carry coal and grain to the coast; the locks built then are still in use today."
)
NUMBERS = "\n".join(" ".join(f"{random.Random(r * 7 + c).uniform(0, 9999):.2f}" for c in range(6)) for r in range(30))
CONTENTS = "\n".join(
    ["Contents"] + [f"{i}. {title} {'.' * (40 - len(title))} {3 + 7 * i}" for i, title in enumerate(
        ["Introduction", "Background and history", "Methods", "Results", "Discussion", "Conclusions",
         "Acknowledgements", "References", "Appendix A: survey forms", "Appendix B: raw data"], start=1)])
CONTENTS_NO_LEADERS = "\n".join(f"Chapter {i} {title} {3 + 11 * i}" for i, title in enumerate(
    ["The early years", "A town on the river", "The railway arrives", "War and recovery", "The new bridge",
     "Modern times"], start=1))
BOILERPLATE_PAGE = """Home | About us | Products | Blog | Contact
Skip to main content
Sign in or create an account
We use cookies to improve your experience. Accept all cookies or manage preferences.
Subscribe to our newsletter
Follow us on Facebook, Twitter and Instagram
Privacy policy
Terms of use
Back to top
© 2024 Example Corp. All rights reserved."""


def only(reason: str, **thresholds) -> Thresholds:
    """Defaults, with every filter but `reason` switched off (so a case tests that filter alone)."""
    off = dict(min_words=0, max_digit_ratio=1, max_symbol_ratio=1, min_mean_word_length=0,
               max_mean_word_length=1000, max_boilerplate_lines=1, max_unpunctuated_lines=1, max_repeated_lines=1,
               max_repeated_ngrams=1)
    keep = {"too_few_words": ["min_words"], "digit_ratio": ["max_digit_ratio"], "symbol_ratio": ["max_symbol_ratio"],
            "mean_word_length": ["min_mean_word_length", "max_mean_word_length"],
            "boilerplate": ["max_boilerplate_lines"], "unpunctuated_lines": ["max_unpunctuated_lines"],
            "repeated_lines": ["max_repeated_lines"], "repeated_ngrams": ["max_repeated_ngrams"], "language": []}
    for name in keep[reason]:
        off.pop(name)
    return Thresholds(**{**off, **thresholds})


CASES = {  # reason -> (a text it keeps, a text it drops)
    "too_few_words": (PROSE, "Total: 1,234 / 5,678 (2024)"),
    "digit_ratio": (PROSE, "Readings 12.5 13.75 14.0 15.25 16.5 17.75 18.0 19.25 20.5 21.75 22.0 23.25 in May."),
    "symbol_ratio": (PROSE, "#### ==== Settings ==== ####\n{ key: <value> } | [ x ] | @@ ~~ ^^ $$ %% &&"),
    "mean_word_length": (PROSE, "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f."),
    "boilerplate": (PROSE + "\nRead more", BOILERPLATE_PAGE),
    "unpunctuated_lines": (PROSE, CONTENTS_NO_LEADERS),
    "repeated_lines": (PROSE, "\n".join(["Buy one, get one free on every order today."] * 8 + [PROSE])),
    "repeated_ngrams": (PROSE, " ".join(["the cat sat on the mat and looked at the door"] * 8) + "."),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_each_filter_keeps_prose_and_drops_its_case(reason):
    keep, drop = CASES[reason]
    assert assess([keep, drop], only(reason)) == [None, reason]
    assert assess([keep], DEFAULTS) == [None]  # the prose passes every default filter


def test_language_keeps_the_listed_languages_only():
    german = ("Der Fluss entspringt in den nördlichen Hügeln und fließt etwa zweihundert Kilometer nach Süden "
              "durch Ackerland. Sein Tal ist seit der Bronzezeit besiedelt.")
    assert assess([PROSE, german], only("language", languages=("en",))) == [None, "language"]
    assert assess([PROSE, german], only("language", languages=("en", "de"))) == [None, None]
    assert assess([PROSE, german], DEFAULTS) == [None, None]  # default: any language


def test_the_defaults_drop_a_table_of_numbers_a_table_of_contents_and_a_page_of_boilerplate():
    reasons = assess([NUMBERS, CONTENTS, CONTENTS_NO_LEADERS, BOILERPLATE_PAGE, PROSE], DEFAULTS)
    assert all(reasons[:4]) and reasons[4] is None, reasons
    assert set(reasons[:4]) <= set(REASONS)


def test_unspaced_scripts_skip_the_word_filters():
    japanese = "東京は日本の首都であり、世界でも有数の大都市です。多くの人々が毎日電車で通勤しています。" * 3
    assert features([japanese]).unspaced[0]
    assert assess([japanese], DEFAULTS) == [None]


def test_wrapped_lines_are_not_unpunctuated():
    wrapped = ("This licence applies to any program or other work which contains\na notice placed by the "
               "copyright holder saying it may be distributed\nunder the terms of this General Public "
               "License. The Program refers\nto any such program or work, and a Work based on the Program "
               "means either\nthe Program or any derivative work under copyright law.")
    assert features([wrapped]).unpunctuated_lines[0] < 0.5
    assert assess([wrapped], DEFAULTS) == [None]


def test_the_bundled_samples_lose_no_chunk_through_the_real_stages(tmp_path):
    """Every sample document's chunks pass the default filters (extract + chunk, as a run does)."""
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(SAMPLE_DOCS))
    assert config.quality_filters and config.near_dup_threshold == 0.8
    documents = extract(store, RUN, config)
    manifest = chunk(store, RUN, config, documents)
    assert manifest.metrics.filtered == {}
    assert manifest.metrics.chunks == store.read_table(manifest, "chunks").num_rows > 20
    off = chunk(store, RunRef(dag_id="d", run_id="r2"), make_config(tmp_path, quality_filters=False),
                extract(store, RunRef(dag_id="d", run_id="r2"), config))
    assert off.metrics.chunks == manifest.metrics.chunks


def test_junk_documents_are_dropped_and_counted_by_reason(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "prose.txt").write_text(PROSE)
    (source / "numbers.txt").write_text(NUMBERS)
    (source / "contents.txt").write_text(CONTENTS)
    (source / "footer.txt").write_text(BOILERPLATE_PAGE)
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(source))
    manifest = chunk(store, RUN, config, extract(store, RUN, config))
    texts = store.read_table(manifest, "chunks")["text"].to_pylist()
    assert texts == [PROSE]
    assert sum(manifest.metrics.filtered.values()) >= 3  # the table of numbers makes two chunks
    assert list(manifest.metrics.filtered) == [r for r in REASONS if r in manifest.metrics.filtered]


def test_thresholds_come_from_the_run_config(tmp_path):
    config = make_config(tmp_path, quality_min_words=50, quality_languages=["en", "fr"])
    thresholds = Thresholds.from_config(config)
    assert thresholds.min_words == 50 and thresholds.languages == ("en", "fr")
    assert Thresholds.from_config(make_config(tmp_path)) == DEFAULTS
    with pytest.raises(ValueError):
        RunConfig(source="s", store="t", quality_languages=["English"])


# Pieces of text for the batch-vs-reference tests: Unicode whitespace and letters, list marks, closing and
# opening punctuation, dot leaders, boilerplate and navigation lines, page numbers.
PIECES = ["the", "River", "flows", "south", " ", " ", "\n", "\n", "\n\n", "\t", "\r\n", "\x0b", "\x1c", "\x85", "\xa0",
          "\u3000", "\u2028", ".", ",", "!", "?", ":", ";", '"', "'", ")", "]", "»", "”", "’", "…", "。", "(", "“", "‘",
          ">", "*", "-", "#", "•", "·", "+", "|", " | ", " / ", " » ", "...", ". . .", "....", "12", "2024", "©", "(c)",
          "copyright", "cookie policy", "We use cookies", "Privacy Policy", "all rights reserved", "Read more",
          " more", "Sign in", "LOG IN", "login", "Follow us", "skip to", "page ", "Page 3 of 9", "Home", "About",
          "é", "Σ", "ΑΣ", "İ", "ß", "ǅ", "ª", "東京", "😀", "𝐀", "²", "٣", "¦", "‰", "→", "\ue000", "_", "=", "%", "@",
          "Über", "naïve", "\u0307", "K", "ſ", "\x00"]
LINES = ["Home | About us | Blog | Contact", "Skip to main content", "12", "²³", "٣٤", "Page 2 of 7",
         "© 2021 Foo Inc.", "(c) 1999 bar", "Copyright ©2020 x.", "- a list item", "> quoted line", "• bullet",
         "the end of a sentence.", "a line that goes on", "Chapter 3 The River 41", "   ",
         "Introduction . . . . . . . 3", "Our COO\u212aIE POLICY"]  # a hint only once str.lower()ed (Kelvin sign)


def varied_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = ["", "\n", "a", PROSE, NUMBERS, CONTENTS, CONTENTS_NO_LEADERS, BOILERPLATE_PAGE,
             "A lone \ud800 surrogate . . . here", BOILERPLATE_PAGE + "\udfff"]  # not valid UTF-8: Python's way
    for _ in range(count):
        lines = [rng.choice(LINES) if rng.random() < 0.4 else "".join(rng.choices(PIECES, k=rng.choice([1, 3, 10, 40])))
                 for _ in range(rng.randint(0, 12))]
        texts.append("\n".join(lines))
    return texts


def test_the_line_measures_of_a_batch_are_those_of_each_text_alone():
    """The batch computation (Arrow and numpy over all the lines) against `_lines`, text by text."""
    texts = varied_texts(400)
    measured = _line_features(_Batch(texts), np.arange(len(texts)))
    for i, text in enumerate(texts):
        assert tuple(float(m[i]) for m in measured) == _lines(text), repr(text)
    assert sum(measured[0] > 0) > 50 and sum(measured[3] > 0) > 20  # boilerplate and repeated lines were seen


def test_the_character_measures_match_their_definitions():
    texts = varied_texts(400, seed=1)
    f = features(texts)
    for i, text in enumerate(texts):
        nonspace = max(len(text) - sum(c in " \t\n\x0b\x0c\r" for c in text), 1)
        words = re.findall("[A-Za-z\u0080-\U0010ffff]+", text)
        symbols = sum(c in "#$%&*+<=>@[\\]^_`{|}~" for c in text) + len(NON_ASCII_SYMBOLS.findall(text)) + sum(
            len(m) for m in DOT_LEADERS.findall(text))
        assert f.words[i] == len(words), repr(text)
        assert f.mean_word_length[i] == sum(map(len, words)) / max(len(words), 1), repr(text)
        assert f.digit_ratio[i] == sum(c.isascii() and c.isdigit() for c in text) / nonspace, repr(text)
        assert f.symbol_ratio[i] == symbols / nonspace, repr(text)
        assert f.unspaced[i] == (sum("\u3000" <= c <= "\u9fff" for c in text) > 0.3 * nonspace), repr(text)


def test_a_chunk_gets_the_same_reason_in_any_batch():
    texts = varied_texts(200, seed=2)
    together = assess(texts, DEFAULTS)
    assert together == [assess([text], DEFAULTS)[0] for text in texts]
    assert len(set(together)) >= 5


def test_whitespace_is_what_str_strip_takes():
    assert WHITESPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
