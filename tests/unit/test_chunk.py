import pyarrow as pa
import pytest

from bonito_tasks.chunk import Chunker, chunk, load_tokenizer
from bonito_tasks.contracts import CHUNKS, DOCUMENTS, ExtractMetrics, RunRef, sha256_hex
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import make_config

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
    documents = writer.commit(config_sha256="x", metrics=ExtractMetrics())

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
