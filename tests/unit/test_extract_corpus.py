"""Extract over messy corpora: every kind of bad file rejected with its reason, every good one kept."""

import json
import os

import pytest

from bonito_tasks.contracts import RunRef, sha256_hex
from bonito_tasks.extract import extract
from bonito_tasks.extract.sources import iter_source, matches
from bonito_tasks.store import LocalStore
from conftest import make_config
from docfactory import PARAGRAPHS, parquet_bytes, pdf_bytes, write_bad_corpus, write_good_corpus

RUN = RunRef(dag_id="d", run_id="r1")
ROWS = ["First row: the tenant pays rent monthly.", "Second row: the landlord repairs the roof.",
        "First row: the tenant pays rent monthly."]  # a repeated row is one document


def write_tables(folder):
    """Good tabular files; returns the distinct texts they hold."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(ROWS)) + "\n")
    (folder / "rows.csv").write_text('id,text\n1,"CSV row, with a comma, about the deposit."\n2,\n')
    (folder / "rows.parquet").write_bytes(parquet_bytes({"text": ["Parquet row about notice periods.", None]}))
    datasets.Dataset.from_dict({"text": ["Saved dataset row about subletting."], "n": [1]}).save_to_disk(
        str(folder / "saved_ds"))
    return {ROWS[0], ROWS[1], "CSV row, with a comma, about the deposit.", "Parquet row about notice periods.",
            "Saved dataset row about subletting."}


def test_bad_corpus_mixed_with_good_files(tmp_path):
    src = tmp_path / "src"
    good = write_good_corpus(src / "good")
    (src / "good" / "cp1252.txt").write_bytes("Größe über Straße — “quoted” text in Windows-1252.".encode("cp1252"))
    (src / "good" / "broken_utf8.md").write_bytes(b"Mostly fine UTF-8 text \xff\xfe\x80 with damage in the middle.")
    texts = write_tables(src / "tables")
    expected = write_bad_corpus(src, tmp_path / "outside")
    assert len(set(expected)) >= 20

    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=str(src), max_file_bytes=200_000))
    docs = store.read_table(manifest, "documents").to_pylist()
    rejects = store.read_table(manifest, "rejects").to_pylist()

    got = {os.path.relpath(r["source_uri"], src): r["reason"] for r in rejects}
    assert got == expected
    assert all(r["detail"] for r in rejects)
    ids = {d["doc_id"] for d in docs}
    assert {sha256_hex(b) for b in good.values()} <= ids  # every good file came through
    assert {sha256_hex(t) for t in texts} <= ids  # and every distinct tabular row
    assert len(docs) == len(good) + 2 + len(texts)
    assert "Straße" in next(d["text"] for d in docs if d["source_uri"].endswith("cp1252.txt"))
    assert "outside the source root" not in "".join(d["text"] for d in docs)
    assert manifest.metrics.rejects == len(expected)
    assert manifest.metrics.rejects_by_reason["corrupt_pdf"] == 2  # the run summary lists them


def test_tabular_rows_are_documents_with_row_lineage(tmp_path):
    texts = write_tables(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=str(tmp_path / "src")))
    docs = store.read_table(manifest, "documents").to_pylist()
    assert {d["text"] for d in docs} == texts
    by_text = {d["text"]: d for d in docs}
    assert by_text[ROWS[1]]["source_uri"].endswith("rows.jsonl#row=1")
    assert by_text["Saved dataset row about subletting."]["media_type"] == "application/vnd.hf-dataset"
    assert manifest.metrics.duplicate_files == 1  # the repeated JSONL row


def test_text_column_param(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "rows.csv").write_text("title,body\nA,Body text under a custom column name.\n")
    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=str(src), text_column="body"))
    assert store.read_table(manifest, "documents")["text"].to_pylist() == ["Body text under a custom column name."]


def test_include_exclude_globs(tmp_path):
    src = tmp_path / "src"
    for name in ["a.txt", "sub/b.txt", "sub/c.md", "skip/d.txt", "sub/skip/e.txt"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(f"Text of {name}.")

    def names(inc, exc):
        return sorted(os.path.relpath(f.uri, src) for f in iter_source(str(src), inc, exc))

    assert names(["**/*.txt"], ["skip/**"]) == ["a.txt", "sub/b.txt", "sub/skip/e.txt"]
    assert names(["**"], ["**/skip/**", "*.md"]) == ["a.txt", "sub/b.txt"]
    assert names(["sub/*.md"], []) == ["sub/c.md"]
    assert matches("a.pdf", ["**/*.pdf"], []) and not matches("a.pdf", ["**/*.pdf"], ["a.*"])


def test_single_file_source(tmp_path):
    path = tmp_path / "one.pdf"
    path.write_bytes(pdf_bytes(PARAGRAPHS))
    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=str(path)))
    docs = store.read_table(manifest, "documents").to_pylist()
    assert len(docs) == 1 and len(docs[0]["page_starts"]) == 3 and manifest.metrics.pages == 3


def test_s3_globs_and_streamed_size_limit(tmp_path, s3_bucket):
    import boto3

    bucket, kwargs = s3_bucket
    client = boto3.client("s3", **kwargs)
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"docs/keep/{i}.txt", Body=f"Document number {i} of the bucket.".encode())
    client.put_object(Bucket=bucket, Key="docs/drop/x.txt", Body=b"Excluded by a glob.")
    client.put_object(Bucket=bucket, Key="docs/keep/big.txt", Body=b"x" * 5000)
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=f"s3://{bucket}/docs/", exclude=["drop/**"], max_file_bytes=1000)
    manifest = extract(store, RUN, config, kwargs)
    assert sorted(store.read_table(manifest, "documents")["source_uri"].to_pylist()) == [
        f"s3://{bucket}/docs/keep/{i}.txt" for i in range(3)]
    assert store.read_table(manifest, "rejects")["reason"].to_pylist() == ["too_large"]


def test_reads_stop_at_the_size_limit(tmp_path):
    path = tmp_path / "grows.txt"
    path.write_bytes(b"y" * 10_000)
    [file] = iter_source(str(path))
    assert len(file.read(100)) == 101  # never the whole file when it is over the limit


@pytest.mark.parametrize("overrides", [{"chunk_overlap_tokens": 400}])
def test_overlap_must_leave_room(tmp_path, overrides):
    with pytest.raises(ValueError, match="chunk_overlap_tokens"):
        make_config(tmp_path, **overrides)
