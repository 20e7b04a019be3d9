"""The dataset in Hugging Face Hub layout: Parquet shards per task type and a sources sidecar.

    data/<task_type>/train-00000-of-0000N.parquet   the examples of one task type (one config)
    data/<task_type>/train-<run>-00000-of-0000N.parquet   shards an "append" run added
    sources.jsonl                                     one line per source document, without its text
    assets/                                           quality plots from validate
    README.md                                         the dataset card (card.py)

Append never adds a row twice: a new row is dropped when its `example_id` or its (input, output)
pair is already in the dataset or earlier in the same run (rows taken in example_id order), and,
with a near-duplicate threshold, when its instruction and output nearly repeat such a row
(counted apart); it checks the dataset's index, never its data (`append_indexed`, history.py).

Every published row also has `messages`, the example as a chat ([{role: user, content: input},
{role: assistant, content: output}]), the format trl's SFTTrainer and chat templates read as is.
It is added here, at publish time: the stages' EXAMPLES contract stays input/output. Shards of an
earlier publish without it get it when the dataset is indexed (`index_existing`: one schema per
dataset).
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks.contracts import DOCUMENTS, EXAMPLES
from bonito_tasks.publish import files as content
from bonito_tasks.publish import history
from bonito_tasks.publish.files import Content
from bonito_tasks.publish.hub import PublishError
from bonito_tasks.store import ROW_GROUP_ROWS, parquet_bytes

log = logging.getLogger(__name__)

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
    shards: dict[str, Content]  # path in the dataset -> Parquet bytes or file (an indexed append: its new shards)
    num_bytes: int = 0  # size of the rows in memory (Arrow), as `datasets` records a split's num_bytes
    stored_size: int = 0  # Parquet bytes of the shards the dataset already holds and keeps (indexed append)

    @property
    def folder(self) -> str:
        return f"{DATA_DIR}/{self.task_type}"

    @property
    def download_size(self) -> int:
        return self.stored_size + sum(map(content.size, self.shards.values()))


class ExistingFiles(Protocol):
    """The files a dataset already holds (the Hub repo's head, or an export prefix)."""

    paths: list[str]

    def read(self, path: str) -> bytes: ...


def task_splits(
    examples: pa.Table, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, tag: str | None = None,
    folder: Path | None = None,
) -> list[TaskSplit]:
    """One TaskSplit per task type present, sorted by name, rows sorted by example_id: the same
    examples always give the same bytes. `tag` (an append's run) goes into the shard names. With
    `folder`, each shard is written there (at its path in the dataset) as it is made, not kept in memory."""
    examples = examples.select(EXAMPLES.names).cast(EXAMPLES)
    splits = []
    for task_type in sorted(set(examples.column("task_type").to_pylist())):
        rows = with_messages(examples.filter(pc.equal(examples["task_type"], task_type)).sort_by("example_id"))
        n_shards = -(-rows.num_rows // rows_per_shard)
        shards = {
            path: write_shard(rows.slice(i * rows_per_shard, rows_per_shard), path, folder)
            for i, path in enumerate(shard_paths(task_type, n_shards, tag))
        }
        splits.append(TaskSplit(task_type, rows.num_rows, shards, sum(map(parquet_arrow_bytes, shards.values()))))
    return splits


def shard_paths(task_type: str, n_shards: int, tag: str | None = None) -> list[str]:
    stem = f"{SPLIT}-{tag}-" if tag else f"{SPLIT}-"
    return [f"{DATA_DIR}/{task_type}/{stem}{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


def write_shard(rows: pa.Table, path: str, folder: Path | None) -> Content:
    """A shard as Parquet bytes (`parquet_bytes`), or with `folder`, the same bytes in the file
    `folder/path`."""
    if folder is None:
        return parquet_bytes(rows)
    file = folder / path
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, file, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return file


SPILL_ROWS = 20_000  # at most, rows of a sorted run (write_splits): the window sorted in memory at a time


def write_splits(parts: Iterable[pa.Table], folder: Path, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                 rows: int | None = None, tag: str | None = None) -> list[TaskSplit]:
    """`task_splits(concat(parts), rows_per_shard, tag, folder)`, the same files, without ever
    holding more than a part and a window of rows: an external merge sort. Parts are read one at a
    time and cut into windows of at most SPILL_ROWS rows; each window is sorted by example_id per
    task type into a run (a Parquet file in a scratch folder). Then each task type's runs are
    merged into its shards a row group (ROW_GROUP_ROWS rows) at a time: the merge reads the runs'
    example_ids a run row group at a time, and a row group's rows are a contiguous slice of each
    run, read and sorted once more, then written to the shard's file. Memory: a part and a window,
    then a row group and up to two run row groups per run. `rows` (the parts' total, when known)
    sizes the runs' row groups so that those add up to at most a row group written, however many
    runs there are."""
    window, written = min(rows_per_shard, SPILL_ROWS), min(rows_per_shard, ROW_GROUP_ROWS)
    windows = -(-rows // window) if rows else 4
    group = max(1, min(written // (2 * windows), window))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runs-", dir=folder) as scratch:
        runs = _sorted_runs(parts, Path(scratch), window, group)
        return [_merge_runs(task_type, runs[task_type], folder, rows_per_shard, tag) for task_type in sorted(runs)]


def _sorted_runs(parts: Iterable[pa.Table], scratch: Path, window: int, group: int) -> dict[str, list[Path]]:
    """The parts' rows in windows of `window` rows (the last may be shorter), each sorted by
    example_id per task type into a run file of row groups of `group` rows (task type -> its runs,
    in part order)."""
    runs: dict[str, list[Path]] = {}
    held: list[pa.Table] = []

    def spill() -> None:
        rows = pa.concat_tables(held)
        held.clear()
        for task_type in sorted(set(rows["task_type"].to_pylist())):
            run = scratch / f"{task_type}-{len(runs.get(task_type, [])):06d}.parquet"
            pq.write_table(rows.filter(pc.equal(rows["task_type"], task_type)).sort_by("example_id"), run,
                           compression="zstd", row_group_size=group, use_dictionary=False)  # text, read once
            runs.setdefault(task_type, []).append(run)

    for part in parts:
        part = part.select(EXAMPLES.names).cast(EXAMPLES)
        start = 0
        while start < part.num_rows:
            room = window - sum(t.num_rows for t in held)
            held.append(part.slice(start, room))
            start += room
            if sum(t.num_rows for t in held) >= window:
                spill()
    if held:
        spill()
    return runs


def _merge_runs(task_type: str, runs: list[Path], folder: Path, rows_per_shard: int, tag: str | None) -> TaskSplit:
    """The task type's shards from its sorted runs, each written a row group at a time: the same
    bytes as `write_shard` of the shard's rows."""
    files = [pq.ParquetFile(run) for run in runs]
    total = sum(f.metadata.num_rows for f in files)
    merged = heapq.merge(*(_ids(f, r) for r, f in enumerate(files)))  # (example_id, run): ties in run order
    taken = [0] * len(files)
    shards: dict[str, Content] = {}
    for i, path in enumerate(shard_paths(task_type, -(-total // rows_per_shard), tag)):
        file = folder / path
        file.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(file, PUBLISHED, compression="zstd") as writer:
            left = min(rows_per_shard, total - i * rows_per_shard)
            while left:
                counts = Counter(map(itemgetter(1), islice(merged, min(ROW_GROUP_ROWS, left))))
                rows = pa.concat_tables([_slice(files[r], taken[r], counts[r]) for r in sorted(counts)]
                                        ).sort_by("example_id")  # the runs' row groups read are freed here
                for r, n in counts.items():
                    taken[r] += n
                    left -= n
                writer.write_table(with_messages(rows), row_group_size=ROW_GROUP_ROWS)
        shards[path] = file
    return TaskSplit(task_type, total, shards, sum(map(parquet_arrow_bytes, shards.values())))


def _ids(run: pq.ParquetFile, index: int) -> Iterator[tuple[str, int]]:
    for batch in run.iter_batches(batch_size=run.metadata.row_group(0).num_rows, columns=["example_id"]):
        yield from zip(batch.column(0).to_pylist(), repeat(index))


def _slice(run: pq.ParquetFile, start: int, n: int) -> pa.Table:
    """Rows [start, start + n) of a run, reading only the row groups that hold them."""
    group = run.metadata.row_group(0).num_rows  # every row group but the last
    first, last = start // group, (start + n - 1) // group
    return run.read_row_groups(range(first, last + 1)).slice(start - first * group, n)


def parquet_arrow_bytes(data: Content) -> int:
    """Bytes the rows of one Parquet shard take in memory as Arrow once read back: what `datasets`
    adds up as a split's num_bytes (it reads a shard a row group at a time, and so does this)."""
    file = pq.ParquetFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    return sum(file.read_row_group(i).nbytes for i in range(file.num_row_groups))


@dataclass(frozen=True)
class Appended:
    """An indexed append (history.py): the files it adds and the dataset it makes."""

    files: dict[str, Content]  # new shards, this run's index part, the stats (and, once, a migrated history)
    splits: list[TaskSplit]  # every task type of the dataset: its totals, this run's new shards
    added: dict[str, int]  # rows added per task type
    totals: history.RunStats  # the dataset after this append
    runs: int  # publishes whose rows the dataset holds
    skipped: int = 0
    near_duplicates: int = 0
    rows_scanned: int = 0  # index rows read


def append_indexed(
    existing: ExistingFiles, night: Callable[[], Iterable[pa.Table]], night_rows: int, tag: str,
    rows_per_shard: int, folder: Path, near_dup_threshold: float | None = None,
    passages: Callable[[pa.Table], Mapping[str, str]] = lambda rows: {},
    on_fresh: Callable[[pa.Table], None] | None = None,
) -> Appended:
    """The night's rows that the dataset does not hold yet, checked against its index (history.py)
    and never against its data: the existing shards are neither read nor rewritten. A dataset
    without an index (published before it existed) is indexed once, here. Re-publishing a run
    (`tag`) yields the same files: its own shards, index part and stats entry count as not there.

    `night()` yields the night's `night_rows` rows a part at a time, and is called twice: once for
    the rows' keys (history.NightKeys, 96 bytes a row: all the append holds of the night;
    `passages(part)`: chunk_id -> text of the part's passages, see history.sketches), freed before
    the second, which writes the rows kept to `folder` (write_splits, a shard at a time;
    `on_fresh` sees each part of them). The new index part goes to `folder` too.
    Rows are taken in example_id order (history.sort_keys): of rows sharing a key, the first is kept."""
    files: dict[str, Content] = {}
    if history.STATS_FILE in existing.paths:
        stats = history.DatasetStats.model_validate_json(existing.read(history.STATS_FILE)).without(tag)
    else:
        stats, migrated = index_existing(existing, tag)
        files |= migrated
    night_keys = history.NightKeys.read(night(), night_rows, passages)
    new = night_keys.keys
    seen = history.check_history(_index_parts(existing, stats, files), new, near_dup_threshold)
    keep = ~(seen.ids | seen.pairs) & _first_of_each(night_keys)
    exact_fresh = int(keep.sum())
    if near_dup_threshold is not None and exact_fresh:
        keep &= ~seen.near
        candidates = night_keys.in_order(keep)
        keep[candidates[history.near_within(new.sketches, candidates, near_dup_threshold)]] = False
    n_fresh = int(keep.sum())
    contributing, rows_scanned = len(np.unique(new.docs[keep & ~seen.docs])), seen.rows_scanned
    index_part = history.write_index(new, night_keys.in_order(keep), folder / history.index_part_path(tag)) \
        if n_fresh else None
    del night_keys, new, seen  # the night's keys: not held while its rows are written
    models: set[tuple[str, str]] = set()
    sampling: set[str] = set()

    def fresh_parts() -> Iterator[pa.Table]:
        start = 0
        for rows in night():
            fresh = rows.filter(pa.array(keep[start:start + rows.num_rows]))
            start += rows.num_rows
            models.update((m["model_id"], m["model_revision"])
                          for m in fresh.group_by(["model_id", "model_revision"]).aggregate([]).to_pylist())
            sampling.update(pc.unique(fresh["sampling_params"]).to_pylist())
            if on_fresh:
                on_fresh(fresh)
            yield fresh

    new_splits = write_splits(fresh_parts(), folder, rows_per_shard, n_fresh, tag)
    added = history.RunStats(
        splits={s.task_type: history.SplitStats(rows=s.rows, num_bytes=s.num_bytes, download_size=s.download_size,
                                                shards=sorted(s.shards)) for s in new_splits},
        models=sorted(models), sampling=sorted(sampling), contributing=contributing,
    )
    if index_part is not None:
        stats = stats.with_run(tag, added)
        files[history.index_part_path(tag)] = index_part
    totals = stats.totals()
    by_type = {s.task_type: s for s in new_splits}
    splits = [TaskSplit(t, split.rows, by_type[t].shards if t in by_type else {}, split.num_bytes,
                        split.download_size - (by_type[t].download_size if t in by_type else 0))
              for t, split in totals.splits.items()]
    files |= {path: data for split in new_splits for path, data in split.shards.items()}
    files[history.STATS_FILE] = stats.to_bytes()
    log.info("append: %d of %d new row(s) kept after checking %d indexed row(s); the dataset holds %d",
             n_fresh, night_rows, rows_scanned, sum(s.rows for s in splits))
    return Appended(files=files, splits=splits, added={s.task_type: s.rows for s in new_splits}, totals=totals,
                    runs=sum(1 for run in stats.runs.values() if run.splits), skipped=night_rows - n_fresh,
                    near_duplicates=exact_fresh - n_fresh, rows_scanned=rows_scanned)


PREFETCH_PARTS = 1  # index parts downloading while the one before is scanned


def _index_parts(existing: ExistingFiles, stats: history.DatasetStats, rebuilt: dict[str, Content]
                 ) -> Iterator[bytes]:
    """The index part of every run the stats list; one that is missing or unreadable is rebuilt from
    the shards it indexes (and goes into `rebuilt`, so the commit repairs it): never skipped. The
    next PREFETCH_PARTS parts download while the caller scans one."""
    migrated = {p: content.read(data) for p, data in rebuilt.items() if p.startswith(f"{history.INDEX_DIR}/")}
    yield from migrated.values()
    runs = [(history.index_part_path(tag), run) for tag, run in stats.runs.items()
            if history.index_part_path(tag) not in migrated]

    def read(path: str) -> bytes | None:
        return existing.read(path) if path in existing.paths else None

    with ThreadPoolExecutor(max_workers=PREFETCH_PARTS) as pool:
        pending = deque(pool.submit(read, path) for path, _ in runs[:PREFETCH_PARTS])
        for i, (path, run) in enumerate(runs):
            data = pending.popleft().result()
            if i + PREFETCH_PARTS < len(runs):
                pending.append(pool.submit(read, runs[i + PREFETCH_PARTS][0]))
            if data is not None and history.readable(data):
                yield data
                continue
            shards = [p for split in run.splits.values() for p in split.shards]
            log.warning("index part %s is %s: rebuilding it from its %d shard(s)", path,
                        "unreadable" if data is not None else "missing", len(shards))
            rows = pa.concat_tables([_read_examples(p, existing.read(p)) for p in shards]) if shards else \
                EXAMPLES.empty_table()
            data = rebuilt[path] = history.index_bytes(history.RowKeys.of(rows, {}).index_table())
            yield data


def index_existing(existing: ExistingFiles, tag: str) -> tuple[history.DatasetStats, dict[str, bytes]]:
    """Index a dataset published before the index existed (once: its stats say so from then on).
    Its shards are read this one time; a shard without `messages` gets it (one schema per dataset)."""
    own = f"{SPLIT}-{tag}-"
    paths = sorted(p for p in existing.paths if p.startswith(f"{DATA_DIR}/") and p.endswith(".parquet")
                   and not p.rsplit("/", 1)[-1].startswith(own))
    if not paths:
        return history.DatasetStats(), {}
    log.info("indexing the published dataset once (it has no %s yet): %d shard(s)", history.STATS_FILE, len(paths))
    files: dict[str, bytes] = {}
    indexed = history.RunStats()
    tables = []
    for path in paths:
        data = existing.read(path)
        rows = with_messages(_read_examples(path, data))
        if "messages" not in pq.read_schema(io.BytesIO(data)).names:
            data = files[path] = parquet_bytes(rows)
        split = indexed.splits.setdefault(path.split("/")[1], history.SplitStats())
        split.rows += rows.num_rows
        split.num_bytes += parquet_arrow_bytes(data)
        split.download_size += len(data)
        split.shards.append(path)
        tables.append(rows.select(EXAMPLES.names))
    old = pa.concat_tables(tables)
    indexed.models = sorted({(m, r) for m, r in zip(old["model_id"].to_pylist(), old["model_revision"].to_pylist())})
    indexed.sampling = sorted(set(old["sampling_params"].to_pylist()))
    indexed.contributing = len(set(old["doc_id"].to_pylist()))
    files[history.index_part_path("_published-before-the-index")] = history.index_bytes(
        history.RowKeys.of(old, {}).index_table())
    log.info("indexed %d published row(s)", old.num_rows)
    return history.DatasetStats(runs={"_published-before-the-index": indexed}), files


def _first_of_each(night: history.NightKeys) -> np.ndarray:
    """Per row: whether no row before it in publish order has its example_id or its (input, output) pair."""
    first = np.ones(len(night.keys), dtype=bool)
    for keys in (night.keys.ids, night.keys.pairs):
        _, index = np.unique(keys[night.order], return_index=True)
        in_order = np.zeros(len(keys), dtype=bool)
        in_order[index] = True
        first[night.order[~in_order]] = False
    return first


def merged_sources(existing: ExistingFiles, sources: pa.Table) -> pa.Table:
    """The dataset's sources (sources.jsonl) and this run's, one row each."""
    old = _read_sources(existing)
    return _unique_sources(pa.concat_tables([old, sources.select(SOURCE_COLUMNS).cast(old.schema)]))


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
