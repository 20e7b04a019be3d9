"""The GX contracts at the extract and chunk boundaries, on tables written by a real StageWriter."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bonito_tasks.checks import ValidationFailed, check_chunks, check_documents
from bonito_tasks.contracts import CHUNKS, DOCUMENTS, ExtractMetrics, RunRef, sha256_hex
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore

RUN = RunRef(dag_id="d", run_id="r")
TEXT = "First page of the policy.\nSecond page of the policy."


def document(text: str = TEXT, **changes) -> dict:
    row = {"doc_id": sha256_hex(text), "source_uri": "/docs/policy.pdf", "media_type": "application/pdf",
           "size_bytes": 1000, "text": text, "page_starts": [0, 26]}
    return row | changes


def written(store, stage: str, table: str, rows: list[dict], schema: pa.Schema) -> StageWriter:
    writer = StageWriter(store, RUN, stage)
    writer.begin()
    writer.add(table, pa.Table.from_pylist(rows, schema))
    return writer


def chunk(start: int, end: int, text: str | None = None, **changes) -> dict:
    row = {"chunk_id": sha256_hex(f"{start}:{end}"), "doc_id": sha256_hex(TEXT), "chunk_index": 0,
           "char_start": start, "char_end": end, "n_tokens": 5, "text": TEXT[start:end] if text is None else text,
           "page": 1, "also_in": []}
    return row | changes


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def documents(store):
    writer = written(store, "extract", "documents", [document()], DOCUMENTS)
    return writer.commit(metrics=ExtractMetrics())


def test_clean_documents_and_chunks_pass(store, documents):
    check_documents(store, written(store, "extract2", "documents", [document(), document("Other.", page_starts=None)],
                                      DOCUMENTS))
    check_chunks(store, written(store, "chunk", "chunks", [chunk(0, 25), chunk(26, len(TEXT))], CHUNKS), documents)


@pytest.mark.parametrize("row, failed", [
    (document(text=" \n ", page_starts=None), "text_not_empty"),
    (document(doc_id="not-a-hash"), "doc_id_sha256"),
    (document(page_starts=[0, 500]), "page_starts_in_bounds"),
    (document(text="manip\ufffeulation", page_starts=None), "text_clean"),
    (document(text="line one\rline two", page_starts=None), "text_clean"),
    (document(text="lost \ufffd byte", page_starts=None), "text_clean"),
])
def test_a_broken_document_fails_the_extract_contract(store, row, failed):
    writer = written(store, "extract", "documents", [document("Fine.", page_starts=None), row], DOCUMENTS)

    with pytest.raises(ValidationFailed, match=f"(?s)break the bonito_documents contract.*- {failed} ") as caught:
        check_documents(store, writer)

    assert [f["name"] for f in caught.value.findings.failed] == [failed]


@pytest.mark.parametrize("row, failed", [
    (chunk(40, 90, text=TEXT[40:] + "x" * (90 - len(TEXT))), "end_in_bounds"),
    (chunk(0, 25, text="First page"), "span_matches_text"),
    (chunk(0, 3, text="   "), "text_not_empty"),
    (chunk(0, 25, doc_id="unknown"), "known_document"),
    (chunk(0, 25, text="First page of the\x07policy."), "text_clean"),
])
def test_a_broken_chunk_fails_the_chunk_contract(store, documents, row, failed):
    writer = written(store, "chunk", "chunks", [chunk(26, len(TEXT)), row], CHUNKS)

    with pytest.raises(ValidationFailed, match=f"(?s)break the bonito_chunks contract.*- {failed} ") as caught:
        check_chunks(store, writer, documents)

    assert [f["name"] for f in caught.value.findings.failed] == [failed]


def test_repeated_ids_break_the_contracts_across_parts(store, documents):
    writer = written(store, "extract", "documents", [document()], DOCUMENTS)
    writer.add("documents", pa.Table.from_pylist([document()], DOCUMENTS))  # the same document in a second part
    with pytest.raises(ValidationFailed, match=r"- unique_doc_id \(contract on doc_id\): 1 unexpected \(50.00%\)"):
        check_documents(store, writer)
    chunks = written(store, "chunk", "chunks", [chunk(0, 25)], CHUNKS)
    chunks.add("chunks", pa.Table.from_pylist([chunk(0, 25)], CHUNKS))
    with pytest.raises(ValidationFailed, match="unique_chunk_id"):
        check_chunks(store, chunks, documents)


def test_the_boundary_contracts_do_not_import_great_expectations(tmp_path):
    """Extract and chunk tasks, dozens a night, check their parts without GX's import (~7 s each)."""
    import subprocess
    import sys

    script = (
        "import sys, pyarrow as pa\n"
        "from bonito_tasks.checks import check_documents\n"
        "from bonito_tasks.contracts import DOCUMENTS, RunRef, sha256_hex\n"
        "from bonito_tasks.stage import StageWriter\n"
        "from bonito_tasks.store import LocalStore\n"
        f"store = LocalStore({str(tmp_path / 'store')!r})\n"
        "writer = StageWriter(store, RunRef(dag_id='d', run_id='r'), 'extract')\n"
        "writer.add('documents', pa.Table.from_pylist([{'doc_id': sha256_hex('x'), 'source_uri': '/x', "
        "'media_type': 'text/plain', 'size_bytes': 1, 'text': 'x', 'page_starts': None}], DOCUMENTS))\n"
        "check_documents(store, writer)\n"
        "print('great_expectations' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
