"""The dataset in Hugging Face Hub layout: Parquet shards per task type and a sources sidecar.

    data/<task_type>/train-00000-of-0000N.parquet   the examples of one task type (one config)
    data/<task_type>/train-<run>-00000-of-0000N.parquet   shards an "append" run added
    sources.jsonl                                     one line per source document, without its text
    assets/                                           quality plots from validate
    README.md                                         the dataset card (card.py)

Append never adds a row twice: a new row is dropped when its `example_id` or its (input, output)
pair is already in the dataset or earlier in the same run (rows taken in example_id order), and,
with a near-duplicate threshold, when its instruction and output nearly repeat such a row
(neardup.py; counted apart).

Every published row also has `messages`, the example as a chat ([{role: user, content: input},
{role: assistant, content: output}]), the format trl's SFTTrainer and chat templates read as is.
It is added here, at publish time: the stages' EXAMPLES contract stays input/output. Shards of an
earlier publish without it get it when an append rewrites the dataset (one schema per dataset).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks.contracts import DOCUMENTS, EXAMPLES, canonical_json, sha256_hex
from bonito_tasks.publish.hub import PublishError
from bonito_tasks.publish.neardup import near_duplicates
from bonito_tasks.store import parquet_bytes

SPLIT = "train"
DATA_DIR = "data"
SOURCES_FILE = "sources.jsonl"
CARD_FILE = "README.md"
ASSETS_DIR = "assets"
SOURCE_COLUMNS = ["doc_id", "source_uri", "media_type", "size_bytes"]
DEFAULT_ROWS_PER_SHARD = 100_000
MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.large_string())])
# The published rows: EXAMPLES with `messages` (user: input, assistant: output) after `output`.
PUBLISHED = pa.schema([*EXAMPLES][:EXAMPLES.get_field_index("output") + 1]
                      + [pa.field("messages", pa.list_(MESSAGE), nullable=False)]
                      + [*EXAMPLES][EXAMPLES.get_field_index("output") + 1:])


def with_messages(examples: pa.Table) -> pa.Table:
    """The rows as published: EXAMPLES columns plus `messages` built from input and output."""
    rows = examples.select(EXAMPLES.names).cast(EXAMPLES)
    n = rows.num_rows
    order = np.empty(2 * n, dtype=np.int64)  # user, assistant, user, assistant, ...
    order[0::2], order[1::2] = np.arange(n), np.arange(n, 2 * n)
    content = pa.concat_arrays([rows["input"].combine_chunks(), rows["output"].combine_chunks()]).take(order) \
        if n else pa.array([], pa.large_string())
    roles = pa.array(["user", "assistant"] * n, pa.string())
    messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                        pa.StructArray.from_arrays([roles, content], fields=list(MESSAGE)))
    return rows.add_column(PUBLISHED.get_field_index("messages"), PUBLISHED.field("messages"), messages).cast(PUBLISHED)


@dataclass(frozen=True)
class TaskSplit:
    """The examples of one task type as Parquet shards."""

    task_type: str
    rows: int
    shards: dict[str, bytes]  # path in the dataset -> Parquet bytes
    num_bytes: int = 0  # size of the rows in memory (Arrow), as `datasets` records a split's num_bytes

    @property
    def folder(self) -> str:
        return f"{DATA_DIR}/{self.task_type}"

    @property
    def download_size(self) -> int:
        return sum(len(data) for data in self.shards.values())


@dataclass(frozen=True)
class Snapshot:
    """Everything the dataset will hold: shards per task type, every row and every source."""

    splits: list[TaskSplit]
    examples: pa.Table
    sources: pa.Table
    skipped: int = 0  # rows of this run an append left out as duplicates (exact or near)
    near_duplicates: int = 0  # of them, those left out as near-duplicates


class ExistingFiles(Protocol):
    """The files a dataset already holds (the Hub repo's head, or an export prefix)."""

    paths: list[str]

    def read(self, path: str) -> bytes: ...


def task_splits(
    examples: pa.Table, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, tag: str | None = None
) -> list[TaskSplit]:
    """One TaskSplit per task type present, sorted by name, rows sorted by example_id: the same
    examples always give the same bytes. `tag` (an append's run) goes into the shard names."""
    examples = examples.select(EXAMPLES.names).cast(EXAMPLES)
    stem = f"{SPLIT}-{tag}-" if tag else f"{SPLIT}-"
    splits = []
    for task_type in sorted(set(examples.column("task_type").to_pylist())):
        rows = with_messages(examples.filter(pc.equal(examples["task_type"], task_type)).sort_by("example_id"))
        n_shards = -(-rows.num_rows // rows_per_shard)
        shards = {
            f"{DATA_DIR}/{task_type}/{stem}{i:05d}-of-{n_shards:05d}.parquet": parquet_bytes(
                rows.slice(i * rows_per_shard, rows_per_shard)
            )
            for i in range(n_shards)
        }
        splits.append(TaskSplit(task_type, rows.num_rows, shards, sum(map(parquet_arrow_bytes, shards.values()))))
    return splits


def parquet_arrow_bytes(data: bytes) -> int:
    """Bytes the rows of one Parquet shard take in memory as Arrow once read back: what `datasets`
    adds up as a split's num_bytes (it reads a shard a row group at a time)."""
    return pq.read_table(io.BytesIO(data)).nbytes


def arrow_bytes(table: pa.Table) -> int:
    """`parquet_arrow_bytes` of the shard `table` makes. Not `table.nbytes`: `take` and `sort_by`
    leave slack in string buffers, which a card's num_bytes would count and `datasets` does not."""
    return parquet_arrow_bytes(parquet_bytes(table))


def append_snapshot(
    existing: ExistingFiles, examples: pa.Table, sources: pa.Table, tag: str, rows_per_shard: int,
    near_dup_threshold: float | None = None, contexts: Mapping[str, str] | None = None,
) -> Snapshot:
    """The existing dataset plus this run's rows that it does not hold yet, as shards tagged `tag`.

    Shards already tagged `tag` (this run, published before) count as not there: re-publishing a
    run yields the same files. With `near_dup_threshold`, rows that nearly repeat a kept one are left
    out too (`contexts`: chunk_id -> chunk text of this run's rows, see neardup.py).
    """
    own = f"{SPLIT}-{tag}-"
    old_shards = {
        path: existing.read(path)
        for path in existing.paths
        if path.startswith(f"{DATA_DIR}/") and path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith(own)
    }
    old_tables = {path: with_messages(_read_examples(path, data)) for path, data in old_shards.items()}
    for path, data in old_shards.items():  # a shard published before `messages` existed gets it
        if "messages" not in pq.read_schema(io.BytesIO(data)).names:
            old_shards[path] = parquet_bytes(old_tables[path])
    old = pa.concat_tables(t.select(EXAMPLES.names) for t in old_tables.values()) if old_tables else \
        EXAMPLES.empty_table()
    fresh = _new_rows(old, examples.select(EXAMPLES.names).cast(EXAMPLES))
    exact_fresh = fresh.num_rows
    if near_dup_threshold is not None and fresh.num_rows:
        fresh = fresh.filter(pa.array(~near_duplicates(old, fresh, near_dup_threshold, contexts or {})))
    new_splits = {s.task_type: s for s in task_splits(fresh, rows_per_shard, tag)}

    splits = []
    for task_type in sorted({path.split("/")[1] for path in old_shards} | set(new_splits)):
        paths = sorted(p for p in old_shards if p.split("/")[1] == task_type)
        new = new_splits.get(task_type, TaskSplit(task_type, 0, {}))
        rows = sum(old_tables[p].num_rows for p in paths) + new.rows
        num_bytes = sum(arrow_bytes(old_tables[p]) for p in paths) + new.num_bytes
        splits.append(TaskSplit(task_type, rows, {p: old_shards[p] for p in paths} | new.shards, num_bytes))
    old_sources = _read_sources(existing)
    all_sources = pa.concat_tables([old_sources, sources.select(SOURCE_COLUMNS).cast(old_sources.schema)])
    return Snapshot(
        splits=splits,
        examples=pa.concat_tables([old, fresh]),
        sources=_unique_sources(all_sources),
        skipped=examples.num_rows - fresh.num_rows,
        near_duplicates=exact_fresh - fresh.num_rows,
    )


def pair_key(input_text: str, output_text: str) -> str:
    return sha256_hex(canonical_json([input_text, output_text]))


def _new_rows(old: pa.Table, new: pa.Table) -> pa.Table:
    """Rows of `new` whose example_id and (input, output) are in neither `old` nor an earlier new row."""
    seen_ids = set(old.column("example_id").to_pylist())
    seen_pairs = {pair_key(i, o) for i, o in zip(old.column("input").to_pylist(), old.column("output").to_pylist())}
    new = new.sort_by("example_id")
    keep = []
    columns = (new.column(c).to_pylist() for c in ("example_id", "input", "output"))
    for example_id, input_text, output_text in zip(*columns):
        pair = pair_key(input_text, output_text)
        keep.append(example_id not in seen_ids and pair not in seen_pairs)
        seen_ids.add(example_id)
        seen_pairs.add(pair)
    return new.filter(pa.array(keep, pa.bool_())) if keep else new


def _read_examples(path: str, data: bytes) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data)).select(EXAMPLES.names).cast(EXAMPLES)
    except (pa.ArrowException, KeyError) as err:
        raise PublishError(f"{path} in the existing dataset is not a shard of Bonito examples: {err}") from err


def _read_sources(existing: ExistingFiles) -> pa.Table:
    schema = pa.schema([DOCUMENTS.field(c) for c in SOURCE_COLUMNS])
    if SOURCES_FILE not in existing.paths:
        return schema.empty_table()
    rows = [json.loads(line) for line in existing.read(SOURCES_FILE).decode().splitlines() if line.strip()]
    return pa.Table.from_pylist([{c: row.get(c) for c in SOURCE_COLUMNS} for row in rows], schema=schema)


def _unique_sources(sources: pa.Table) -> pa.Table:
    return sources.group_by(SOURCE_COLUMNS).aggregate([]).select(SOURCE_COLUMNS)


def public_source_uri(uri: str, source: str) -> str:
    """A document's `source_uri` as the dataset shows it: a local file relative to the source root
    (`source`; a file outside it, or a single-file source, by its name), so that no local filesystem
    path is published; s3:// and other URIs unchanged. A `#row=N` suffix is kept."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    path, hash_sign, fragment = uri.removeprefix("file://").partition("#")
    if not path.startswith("/"):  # already relative (an earlier publish)
        return uri
    file, root = PurePosixPath(path), PurePosixPath(os.path.abspath(source.removeprefix("file://")))
    relative = file.relative_to(root).as_posix() if root in file.parents else file.name
    return relative + hash_sign + fragment


def public_sources(sources: pa.Table, source: str) -> pa.Table:
    """The sources table with public source URIs (see public_source_uri), one row per distinct row."""
    if sources.num_rows == 0:
        return sources
    uris = [public_source_uri(uri, source) for uri in sources.column("source_uri").to_pylist()]
    column = sources.schema.get_field_index("source_uri")
    public = sources.set_column(column, sources.schema.field(column), pa.array(uris, sources.schema.field(column).type))
    return _unique_sources(public)


def sources_jsonl(documents: pa.Table) -> bytes:
    """Provenance of every source document (content hash, where it came from), never its text."""
    rows = documents.select(SOURCE_COLUMNS).sort_by([("doc_id", "ascending"), ("source_uri", "ascending")])
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows.to_pylist()).encode()
