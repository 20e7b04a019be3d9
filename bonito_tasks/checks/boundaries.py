"""Contracts at stage boundaries: GX suites over the documents and chunks a stage is about to commit.

Extract and chunk call these after writing their Parquet parts and before writing their manifest,
so a stage that breaks the contract fails instead of committing. Like the examples suite, each
suite runs on a narrow profile (lengths and flags) rather than on the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.checks.gx import ValidationFailed, describe, ephemeral_context, present_probe, run_suite, to_pandas
from bonito_tasks.contracts import CHUNKS, DOCUMENTS, FORBIDDEN_CHARS_PATTERN, CheckFindings, Manifest
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import ArtifactStore

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

DOCUMENTS_SUITE = "bonito_documents"
CHUNKS_SUITE = "bonito_chunks"
SHA256_REGEX = r"^[0-9a-f]{64}$"


def _contract(name: str) -> dict:
    return {"name": name, "level": "contract"}


def _profile(store: ArtifactStore, writer: StageWriter, table: str, profile) -> pa.Table:
    """The narrow profile of every part the stage wrote, computed one part at a time so memory
    stays bounded by the largest part, not the stage."""
    parts = [pa.table(profile(store.read_part(writer.prefix, ref))) for ref in writer.shards if ref.table == table]
    return pa.concat_tables(parts) if parts else pa.table({})


def _present(table: pa.Table, schema: pa.Schema) -> dict[str, pa.Array]:
    """A narrow stand-in per non-nullable column (see profile.present_probe)."""
    columns = {}
    for field in schema:
        if field.nullable:
            continue
        values = table[field.name].combine_chunks()
        columns[f"{field.name}__present"] = present_probe(values)
    return columns


def _not_null(schema: pa.Schema) -> list[Expectation]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column=f"{f.name}__present", meta=_contract(f"not_null:{f.name}"),
                                          description=f"{f.name} not null")
        for f in schema if not f.nullable
    ]


def _clean_text() -> Expectation:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeInSet(
        column="text_has_forbidden_chars", value_set=[False], meta=_contract("text_clean"),
        description="text holds no U+FFFE, U+FFFD or C0 control character but newline and tab")


def _check(suite_name: str, what: str, uri: str, columns: pa.Table, expectations: list[Expectation]) -> None:
    """Run one boundary suite on the profile `columns`; raise ValidationFailed listing what failed.
    (The schema itself is enforced by the store: parts are cast to the contract when read.)"""
    import great_expectations as gx

    context = ephemeral_context()
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    outcome = run_suite(context, context.data_sources.add_pandas("bonito"), what, suite, to_pandas(columns))
    if outcome.failed:
        for failure in outcome.failed:
            failure.pop("unexpected_index_list", None)
        lines = [f"{what} at {uri} break the {suite_name} contract; the stage was not committed:"]
        raise ValidationFailed("\n".join(lines + [describe(f) for f in outcome.failed]),
                               CheckFindings(suite=suite_name, failed=outcome.failed))


def check_documents(store: ArtifactStore, writer: StageWriter) -> None:
    """The documents the extract stage wrote: schema, non-empty text, unique sha256 ids, page offsets in bounds."""
    import great_expectations.expectations as gxe

    def profile(docs: pa.Table) -> dict[str, pa.Array]:
        text = pc.fill_null(docs["text"].combine_chunks(), "")
        lengths = pc.utf8_length(text).to_pylist()
        starts = docs["page_starts"].to_pylist()
        doc_id = docs["doc_id"].combine_chunks()
        return _present(docs, DOCUMENTS) | {
            "doc_id": doc_id,
            "doc_id_is_sha256": pc.match_substring_regex(pc.fill_null(doc_id, ""), SHA256_REGEX),
            "text_nonblank_chars": pc.utf8_length(pc.utf8_trim_whitespace(text)),
            "text_has_forbidden_chars": pc.match_substring_regex(text, FORBIDDEN_CHARS_PATTERN),
            "page_starts_in_bounds": pa.array(
                [None if s is None else (s == sorted(s) and all(0 <= p <= n for p in s))
                 for s, n in zip(starts, lengths)],
                pa.bool_(),
            ),
        }

    columns = _profile(store, writer, "documents", profile)
    if not columns.num_rows:
        return
    expectations = _not_null(DOCUMENTS) + [
        gxe.ExpectColumnValuesToBeInSet(column="doc_id_is_sha256", value_set=[True], meta=_contract("doc_id_sha256"),
                                        description="doc_id is a sha256 hex digest"),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id", meta=_contract("unique_doc_id"),
                                         description="one row per doc_id"),
        gxe.ExpectColumnValuesToBeBetween(column="text_nonblank_chars", min_value=1, meta=_contract("text_not_empty"),
                                          description="text has a non-blank character"),
        _clean_text(),
        gxe.ExpectColumnValuesToBeInSet(column="page_starts_in_bounds", value_set=[True],
                                        meta=_contract("page_starts_in_bounds"),
                                        description="page starts ascend and lie within the text"),
    ]
    _check(DOCUMENTS_SUITE, "documents", store.uri(writer.prefix), columns, expectations)


def check_chunks(store: ArtifactStore, writer: StageWriter, documents: Manifest) -> None:
    """The chunks the chunk stage wrote: schema, non-empty text, spans inside their document and
    matching the text's length, unique ids."""
    import great_expectations.expectations as gxe

    doc_ids, doc_lengths = [], []
    for i in range(len(documents.shards_of("documents"))):  # one documents shard in memory at a time
        docs = store.read_shard(documents, "documents", i, columns=["doc_id", "text"])
        doc_ids.append(docs["doc_id"].combine_chunks())
        doc_lengths.append(pc.utf8_length(docs["text"].combine_chunks()))
    doc_ids = pa.concat_arrays(doc_ids) if doc_ids else pa.array([], pa.string())
    doc_lengths = pa.concat_arrays(doc_lengths) if doc_lengths else pa.array([], pa.int64())

    def profile(chunks: pa.Table) -> dict[str, pa.Array]:
        doc_chars = doc_lengths.take(pc.index_in(chunks["doc_id"], value_set=doc_ids))
        start, end = chunks["char_start"].combine_chunks(), chunks["char_end"].combine_chunks()
        text = pc.fill_null(chunks["text"].combine_chunks(), "")
        return _present(chunks, CHUNKS) | {
            "chunk_id": chunks["chunk_id"].combine_chunks(),
            "doc_chars": doc_chars,
            "char_start": start,
            "end_minus_doc_chars": pc.subtract(end, doc_chars),
            "span_minus_text_chars": pc.subtract(pc.subtract(end, start), pc.utf8_length(text)),
            "text_nonblank_chars": pc.utf8_length(pc.utf8_trim_whitespace(text)),
            "text_has_forbidden_chars": pc.match_substring_regex(text, FORBIDDEN_CHARS_PATTERN),
            "n_tokens": chunks["n_tokens"].combine_chunks(),
        }

    columns = _profile(store, writer, "chunks", profile)
    if not columns.num_rows:
        return
    expectations = _not_null(CHUNKS) + [
        gxe.ExpectColumnValuesToBeUnique(column="chunk_id", meta=_contract("unique_chunk_id"),
                                         description="one row per chunk_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="doc_chars", meta=_contract("known_document"),
                                          description="doc_id is a document of the extract stage"),
        gxe.ExpectColumnValuesToBeBetween(column="char_start", min_value=0, meta=_contract("start_in_bounds"),
                                          description="char_start >= 0"),
        gxe.ExpectColumnValuesToBeBetween(column="end_minus_doc_chars", max_value=0, meta=_contract("end_in_bounds"),
                                          description="char_end <= length of the document text"),
        gxe.ExpectColumnValuesToBeBetween(column="span_minus_text_chars", min_value=0, max_value=0,
                                          meta=_contract("span_matches_text"),
                                          description="char_end - char_start == length of the chunk text"),
        gxe.ExpectColumnValuesToBeBetween(column="text_nonblank_chars", min_value=1, meta=_contract("text_not_empty"),
                                          description="text has a non-blank character"),
        _clean_text(),
        gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1, meta=_contract("has_tokens"),
                                          description="n_tokens >= 1"),
    ]
    _check(CHUNKS_SUITE, "chunks", store.uri(writer.prefix), columns, expectations)
