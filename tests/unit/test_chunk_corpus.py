"""Chunk stage over a corpus: overlap, boilerplate fragments, exact duplicates, PDF pages."""

import pyarrow as pa
import pytest

from bonito_tasks.chunk import Chunker, chunk, load_tokenizer
from bonito_tasks.contracts import DOCUMENTS, ExtractMetrics, RunRef, sha256_hex
from bonito_tasks.extract.readers import read_pdf
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import make_config
from docfactory import pdf_bytes

RUN = RunRef(dag_id="d", run_id="r1")
DISCLAIMER = "This document is confidential and intended solely for the addressee named above."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(make_config(tmp_path_factory.mktemp("t")))


def sentence(i: int) -> str:
    return f"Sentence number {i} explains one clause of the licence in plain words."


def commit_documents(store, docs):
    rows = [{"doc_id": sha256_hex(d["text"]), "source_uri": f"/d{i}", "media_type": "text/plain",
             "size_bytes": len(d["text"]), "page_starts": None, **d} for i, d in enumerate(docs)]
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    writer.add("documents", pa.Table.from_pylist(rows, DOCUMENTS))
    return writer.commit(metrics=ExtractMetrics()), rows


def test_overlap_repeats_whole_trailing_sentences(tokenizer):
    text = " ".join(sentence(i) for i in range(40))
    chunker = Chunker(tokenizer, max_tokens=100, overlap_tokens=30)
    spans = chunker.split(text)
    assert len(spans) > 3
    assert max(chunker.count([text[a:b] for a, b in spans])) <= 100
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 < b0 < b1  # each chunk starts inside the one before: they overlap
        overlap = text[a1:b0]
        assert overlap.startswith("Sentence") and overlap.endswith(".")  # whole sentences only
        assert chunker.count([overlap])[0] <= 30
    assert Chunker(tokenizer, max_tokens=100).split(text)[1][0] >= spans[0][1]  # none by default


def test_duplicates_short_fragments_and_lineage(tmp_path):
    store = LocalStore(tmp_path / "store")
    bodies = ["\n\n".join(" ".join(sentence(d * 100 + p * 10 + s) for s in range(3)) for p in range(3))
              for d in range(3)]
    texts = [f"{body}\n\n{DISCLAIMER}" for body in bodies] + ["Page 7"]  # a boilerplate fragment
    documents, rows = commit_documents(store, [{"text": t} for t in texts])
    config = make_config(tmp_path, chunk_max_tokens=40, chunk_shard_size=4, chunk_min_chars=20)
    manifest = chunk(store, RUN, config, documents)
    table = store.read_table(manifest, "chunks").to_pylist()

    assert len({c["text"] for c in table}) == len(table)  # every text once
    assert not any(c["text"] == "Page 7" for c in table)  # under chunk_min_chars
    assert manifest.metrics.short_chunks == 1 and manifest.metrics.duplicate_chunks == 2
    [kept] = [c for c in table if c["text"] == DISCLAIMER]
    places = [(kept["doc_id"], kept["char_start"], kept["char_end"])] + [
        (p["doc_id"], p["char_start"], p["char_end"]) for p in kept["also_in"]]
    by_id = {r["doc_id"]: r["text"] for r in rows}
    assert sorted(p[0] for p in places) == sorted(r["doc_id"] for r in rows[:3])  # lineage keeps every source
    assert all(by_id[d][a:b] == DISCLAIMER for d, a, b in places)
    assert all(c["also_in"] == [] for c in table if c is not kept)
    assert [s.rows for s in manifest.shards_of("chunks")][:-1] == [4] * (len(manifest.shards_of("chunks")) - 1)


def test_pdf_chunks_know_their_page(tmp_path):
    pages = [" ".join(sentence(p * 10 + s) for s in range(4)) for p in range(3)]
    extracted = read_pdf(pdf_bytes(pages))
    store = LocalStore(tmp_path / "store")
    documents, _ = commit_documents(store, [{"text": extracted.text, "page_starts": extracted.page_starts,
                                             "media_type": "application/pdf"}])
    manifest = chunk(store, RUN, make_config(tmp_path, chunk_max_tokens=40), documents)
    table = store.read_table(manifest, "chunks").to_pylist()
    assert {c["page"] for c in table} == {1, 2, 3}
    for c in table:
        assert "Sentence number {}".format((c["page"] - 1) * 10) in extracted.text[
            extracted.page_starts[c["page"] - 1]:c["char_end"]]
        assert c["text"].split()[2].rstrip(".").isdigit() and int(c["text"].split()[2]) // 10 == c["page"] - 1


def test_no_documents_gives_no_chunks(tmp_path):
    store = LocalStore(tmp_path / "store")
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    documents = writer.commit(metrics=ExtractMetrics())
    manifest = chunk(store, RUN, make_config(tmp_path), documents)
    assert manifest.shards_of("chunks") == [] and manifest.metrics.documents == 0
