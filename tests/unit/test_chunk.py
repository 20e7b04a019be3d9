import random

import pyarrow as pa
import pytest

from bonito_tasks.chunk import Chunker, chunk, load_tokenizer
from bonito_tasks.contracts import CHUNKS, DOCUMENTS, ExtractMetrics, RunRef, sha256_hex
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import REPO, SAMPLE_DOCS, make_config

RUN = RunRef(dag_id="d", run_id="r1")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(make_config(tmp_path_factory.mktemp("t")))


def sentence(i: int) -> str:
    return f"Sentence number {i} explains one clause of the licence in plain words."


def test_spans_respect_limit_and_sentence_ends(tokenizer):
    paragraphs = [" ".join(sentence(p * 10 + s) for s in range(6)) for p in range(5)]
    text = "\n\n".join(paragraphs)
    chunker = Chunker(tokenizer, max_tokens=60)
    spans = chunker.split(text)
    assert len(spans) > 3
    pieces = [text[a:b] for a, b in spans]
    assert max(chunker.count(pieces)) <= 60
    for piece in pieces:  # cut only at sentence ends
        assert piece.endswith(".") and piece[0].isupper()
    # Spans are ordered, disjoint, and skip only whitespace.
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start and not text[end:start].strip()


def test_paragraphs_kept_whole_when_they_fit(tokenizer):
    text = "First short paragraph.\n\nSecond short paragraph.\n\n\nThird one."
    assert Chunker(tokenizer, max_tokens=500).split(text) == [(0, len(text))]
    spans = Chunker(tokenizer, max_tokens=8).split(text)
    assert [text[a:b] for a, b in spans] == ["First short paragraph.", "Second short paragraph.", "Third one."]


def test_overlong_sentence_is_split_by_tokens(tokenizer):
    text = " ".join(["word"] * 400)  # one sentence, far over the limit
    chunker = Chunker(tokenizer, max_tokens=50)
    spans = chunker.split(text)
    assert len(spans) >= 8
    assert max(chunker.count([text[a:b] for a, b in spans])) <= 50
    assert "".join(text[a:b] for a, b in spans).replace(" ", "") == text.replace(" ", "")


def test_chunk_stage_shards_and_lineage(tmp_path):
    store = LocalStore(tmp_path / "store")
    texts = ["\n\n".join(" ".join(sentence(d * 100 + p * 10 + s) for s in range(4)) for p in range(6))
             for d in range(3)]
    docs = [{"doc_id": sha256_hex(t), "source_uri": f"/d{i}.txt", "media_type": "text/plain",
             "size_bytes": len(t), "text": t, "page_starts": None} for i, t in enumerate(texts)]
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    writer.add("documents", pa.Table.from_pylist(docs, DOCUMENTS))
    documents = writer.commit(metrics=ExtractMetrics())

    config = make_config(tmp_path, chunk_max_tokens=64, chunk_shard_size=5)
    manifest = chunk(store, RUN, config, documents)
    table = store.read_table(manifest, "chunks")
    assert table.schema == CHUNKS
    assert len(manifest.shards_of("chunks")) == -(-table.num_rows // 5)
    by_doc = {d["doc_id"]: d["text"] for d in docs}
    for row in table.to_pylist():
        assert by_doc[row["doc_id"]][row["char_start"]:row["char_end"]] == row["text"]
        assert 0 < row["n_tokens"] <= 64
    assert len(set(table["chunk_id"].to_pylist())) == table.num_rows
    assert chunk(store, RUN, config, documents) == manifest  # a retry reuses the commit


# --- the counting guarantee: every chunk, tokenized alone, has exactly n_tokens <= max_tokens ---

SPACES = [" ", " ", " ", "  ", "\t", "\n", "\n\n", ". ", ".\n\n", "! ", "? ", "; ", ": ", '." ', ".) ", "\xa0",
          "\u3000", " \n \n ", "\r\n", ", ", " \u200b"]
LETTERS = list("abcdefghij") + ["é", "東", "😀", "ß", "▁", "Ü"]


def random_text(rng: random.Random, words: int) -> str:
    """Pseudo-words and separators, with the whitespace, punctuation and characters that can trip
    a token count: runs of spaces, tabs, CRLF, no-break and ideographic spaces, "▁", emoji."""
    out = []
    for _ in range(words):
        out.append("".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 9))))
        out.append(rng.choice(SPACES))
    return "".join(out)


def sample_texts() -> list[str]:
    from bonito_tasks.extract.readers import read_docx, read_html, read_pdf, read_text

    readers = {".txt": read_text, ".md": read_text, ".html": read_html, ".pdf": read_pdf, ".docx": read_docx}
    return [readers[p.suffix](p.read_bytes()).text for p in sorted(SAMPLE_DOCS.iterdir())
            if p.suffix in readers and p.name != "broken.pdf"]


def corpus() -> list[str]:
    rng = random.Random(12)
    return sample_texts() + [random_text(rng, rng.randint(1, 1500)) for _ in range(12)] + [
        "", "   \n ", "x", " leading and trailing  ", "word " * 300, "a" * 3000, "東京大阪" * 700, "abc\xa0" * 900,
        'He said "Stop." Then she left.\n\n(See the notice.) The end!']


def spm_tokenizer(legacy: bool):
    """A SentencePiece-style BPE (the Llama/Mistral layout Bonito uses), trained here on the
    sample documents: "▁" for spaces, a prepended "▁", byte fallback; legacy: Prepend+Replace
    normalizers and no pre-tokenizer, else a Metaspace pre-tokenizer that does not split."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokenizer.train_from_iterator(sample_texts(), trainers.BpeTrainer(vocab_size=900, special_tokens=specials,
                                                                       show_progress=False))
    if legacy:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.pre_tokenizer = None
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return tokenizer


def unrecognized_tokenizer(tokenizer):
    """The tiny model's tokenizer with an NFC normalizer: a family the chunker cannot prove cuts for."""
    from tokenizers import Tokenizer, normalizers

    copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    copy.normalizer = normalizers.NFC()
    return copy


def assert_exact(chunker: Chunker, texts: list[str], results: list[list[tuple[int, int, int]]]) -> int:
    overlap = chunker.overlap_tokens
    for text, spans in zip(texts, results):
        real = chunker.count([text[a:b] for a, b, _ in spans])
        for (a, b, n), tokens in zip(spans, real):
            assert n == tokens <= chunker.max_tokens, (text[a:b], n, tokens)
            assert a < b and text[a:b] == text[a:b].strip()
        for (a0, b0, _), (a1, b1, _) in zip(spans, spans[1:]):
            assert a0 < a1 and b0 < b1
            if not overlap:
                assert b0 <= a1 and not text[b0:a1].strip()
        if not overlap:  # every non-space character is in a chunk
            assert "".join("".join(text[a:b] for a, b, _ in spans).split()) == "".join(text.split())
    return sum(map(len, results))


@pytest.mark.parametrize("max_tokens, overlap", [(20, 0), (64, 16), (200, 40), (736, 0)])
def test_counts_are_exact_for_the_model_tokenizer(tokenizer, max_tokens, overlap):
    texts = corpus()
    chunker = Chunker(tokenizer, max_tokens, overlap)
    assert chunker.exact
    results = chunker.split_many(texts)
    assert assert_exact(chunker, texts, results) > len(texts)
    pieces = [text[a:b] for text, spans in zip(texts, results) for a, b, _ in spans]
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]  # the call generate's budget assumes
    assert [len(i) for i in ids] == [n for spans in results for _, _, n in spans]


@pytest.mark.parametrize("legacy", [True, False])
def test_counts_are_exact_for_sentencepiece_tokenizers(legacy):
    texts = corpus()
    tokenizer = spm_tokenizer(legacy)
    for max_tokens, overlap in [(24, 0), (100, 30), (736, 0)]:
        chunker = Chunker(tokenizer, max_tokens, overlap)
        assert chunker.exact
        assert_exact(chunker, texts, chunker.split_many(texts))


def test_unrecognized_tokenizer_is_checked_chunk_by_chunk(tokenizer):
    texts = corpus()
    for max_tokens, overlap in [(24, 0), (100, 30)]:
        chunker = Chunker(unrecognized_tokenizer(tokenizer), max_tokens, overlap)
        assert not chunker.exact  # falls back: counts every chunk on its own
        assert_exact(chunker, texts, chunker.split_many(texts))


@pytest.mark.parametrize("family", ["model", "spm"])
def test_cut_rule_holds_for_characters_before_the_space(tokenizer, family):
    """T(x + y) = T(x) ++ C(y) where x ends in a non-space character (every one below U+0800 and
    in the punctuation and full-width blocks, a sample of the rest of the BMP) and y starts with
    a cut's whitespace; |C(y)| = |T("a" + y)| - |T("a")|."""
    chunker = Chunker(tokenizer if family == "model" else spm_tokenizer(True), 24)
    codes = [*range(33, 0x800), *range(0x2000, 0x2070), *range(0x3000, 0x3040), *range(0xFF00, 0xFFF0),
             *range(0x800, 0x10000, 61)]  # scripts, general punctuation, CJK symbols, full-width forms
    chars = [chr(i) for i in codes if not (0xD800 <= i < 0xE000) and not chr(i).isspace()
             and chr(i) not in "\u2581\u180e\u200b\u200c\u200d\u2060\ufeff"]
    for space in sorted(chunker._safe):
        tail = f"{space}word next"
        joined = chunker.count([f"x{c}{tail}" for c in chars])
        alone = chunker.count([f"x{c}" for c in chars])
        after = chunker.count([f"a{tail}", "a"])
        assert [j - a for j, a in zip(joined, alone)] == [after[0] - after[1]] * len(chars), repr(space)


def test_result_depends_only_on_each_text(tokenizer):
    """Batching, cache state and whole-paragraph records change the work, never the chunks."""
    texts = corpus()
    expected = [Chunker(tokenizer, 64).split_counted(t) for t in texts]
    assert Chunker(tokenizer, 64).split_many(texts) == expected
    assert Chunker(tokenizer, 64, batch_chars=700).split_many(texts[::-1]) == expected[::-1]
    warm = Chunker(tokenizer, 64)
    warm.split_many(texts)
    assert warm._whole > 0  # paragraphs are now read whole when they will likely fit
    assert warm.split_many(texts) == expected
    warm._whole = 10**6  # every paragraph (up to a window) whole: those over the budget are cut into sentences
    assert warm.split_many(texts) == expected


def test_sentence_keeps_its_closing_quote(tokenizer):
    text = 'He said "Stop the work now." Then she left the room at once. (See the notice.) The end!'
    pieces = [text[a:b] for a, b in Chunker(tokenizer, max_tokens=20).split(text)]
    assert pieces[0].endswith('now."')
    assert all(p.endswith(('."', ".", ".)", "!")) for p in pieces)


def test_text_without_spaces_is_cut_by_tokens(tokenizer):
    text = "東京大阪" * 2000 + "abc" * 3000
    chunker = Chunker(tokenizer, max_tokens=50)
    spans = chunker.split_counted(text)
    assert "".join(text[a:b] for a, b, _ in spans) == text
    assert [n for _, _, n in spans] == chunker.count([text[a:b] for a, b, _ in spans])
    assert max(n for _, _, n in spans) <= 50


def test_the_chunk_tokenizer_counts_like_the_models_own_class_without_importing_torch(tmp_path):
    """load_tokenizer reads tokenizer.json directly: the same tokens as AutoTokenizer, and no torch in
    the chunk task's memory."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from bonito_tasks.chunk import load_tokenizer

    config = make_config(tmp_path)
    text = (SAMPLE_DOCS / "apache-2.0.txt").read_text()
    ours, auto = load_tokenizer(config), AutoTokenizer.from_pretrained(config.model_id)
    paragraphs = text.split("\n\n")
    assert ours(paragraphs, add_special_tokens=False)["input_ids"] == auto(paragraphs, add_special_tokens=False)[
        "input_ids"]
    code = ("import sys; from bonito_tasks.chunk import load_tokenizer; from bonito_tasks.config import RunConfig; "
            f"load_tokenizer(RunConfig(source='x', store='y', model_id={config.model_id!r})); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(REPO)).stdout.strip() == "False"
