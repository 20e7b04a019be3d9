import pytest

from bonito_tasks.contracts import DOCUMENTS, RunRef, sha256_hex
from bonito_tasks.extract import NothingExtracted, extract
from bonito_tasks.extract.readers import Reject, decode_text, read_docx, read_html, read_pdf
from bonito_tasks.store import LocalStore
from conftest import make_config
from docfactory import PARAGRAPHS, docx_bytes, html_bytes, pdf_bytes, write_good_corpus

RUN = RunRef(dag_id="d", run_id="r1")


def test_pdf_pages_and_offsets():
    out = read_pdf(pdf_bytes(["First page text.", "Second page text."]))
    assert out.page_starts[0] == 0 and len(out.page_starts) == 2
    assert out.text[out.page_starts[1]:].startswith("Second page")


def test_pdf_without_text_layer_is_reported():
    with pytest.raises(Reject) as err:
        read_pdf(pdf_bytes([""]))
    assert err.value.reason == "no_text_layer"


def test_corrupt_pdf_rejected():
    with pytest.raises(Reject) as err:
        read_pdf(b"%PDF-1.4 this is not really a pdf")
    assert err.value.reason == "corrupt_pdf"


def test_docx_paragraphs_and_tables_in_reading_order():
    text = read_docx(docx_bytes(["Before the table."], [["Term", "Value"], ["Fee", "none"]])).text
    assert text.index("Before the table.") < text.index("Term | Value") < text.index("After the table.")


def test_html_main_content_without_boilerplate():
    text = read_html(html_bytes(PARAGRAPHS)).text
    assert PARAGRAPHS[0] in text
    assert "SCRIPT_TEXT" not in text and "color: red" not in text


def test_text_encodings_and_binary():
    assert decode_text("naïve café".encode()) == "naïve café"
    assert "café" in decode_text("Le café est très bon, merci beaucoup.".encode("latin-1"))
    with pytest.raises(Reject) as err:
        decode_text(b"\x00\x01\x02binary")
    assert err.value.reason == "binary_content"


def test_extract_folder_with_rejects(tmp_path):
    src = tmp_path / "src"
    files = write_good_corpus(src)
    (src / "broken.pdf").write_bytes(b"not a pdf at all")
    (src / "empty.txt").write_bytes(b"")
    (src / "binary.md").write_bytes(b"\x00\x01\x02\x03" * 10)
    (src / "image.png").write_bytes(b"\x89PNG....")
    (src / "sub").mkdir()
    (src / "sub" / "copy.txt").write_bytes(files["plain.txt"])  # same bytes: one document
    (src / "huge.txt").write_bytes(b"a" * 100_000)

    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=str(src), max_file_bytes=60_000))
    docs = store.read_table(manifest, "documents")
    rejects = store.read_table(manifest, "rejects").to_pylist()

    assert docs.schema == DOCUMENTS
    assert sorted(docs["doc_id"].to_pylist()) == sorted(sha256_hex(b) for b in files.values())
    assert {r["source_uri"].rsplit("/", 1)[-1]: r["reason"] for r in rejects} == {
        "broken.pdf": "corrupt_pdf",
        "empty.txt": "empty_file",
        "binary.md": "binary_content",
        "image.png": "unsupported_format",
        "huge.txt": "too_large",
    }
    assert manifest.metrics.duplicate_files == 1
    assert all(r["detail"] for r in rejects)


def test_extract_fails_only_when_nothing_extracted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.pdf").write_bytes(b"junk")
    with pytest.raises(NothingExtracted, match="broken.pdf: corrupt_pdf"):
        extract(LocalStore(tmp_path / "store"), RUN, make_config(tmp_path, source=str(src)))


def test_extract_is_reused_on_retry(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_good_corpus(tmp_path / "src")
    config = make_config(tmp_path, source=str(tmp_path / "src"))
    first = extract(store, RUN, config)
    (tmp_path / "src" / "new.txt").write_text("A new file arrives after the stage committed.")
    assert extract(store, RUN, config) == first


def test_extract_from_s3_prefix(tmp_path, s3_bucket):
    import boto3

    bucket, kwargs = s3_bucket
    client = boto3.client("s3", **kwargs)
    files = write_good_corpus(tmp_path / "src")
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"docs/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="docs/broken.docx", Body=b"PK not a zip")
    client.put_object(Bucket=bucket, Key="elsewhere/other.txt", Body=b"outside the prefix")

    store = LocalStore(tmp_path / "store")
    manifest = extract(store, RUN, make_config(tmp_path, source=f"s3://{bucket}/docs/"), kwargs)
    uris = store.read_table(manifest, "documents")["source_uri"].to_pylist()
    assert sorted(uris) == sorted(f"s3://{bucket}/docs/{n}" for n in files)
    assert store.read_table(manifest, "rejects")["reason"].to_pylist() == ["corrupt_docx"]
