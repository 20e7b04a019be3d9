"""What an append checks against the published dataset, read as a compact index, never as data.

A dataset that is appended to holds, besides its data, a hidden folder `.bonito/` (the configs'
`data_files` load `data/` only):

    .bonito/index/part-<run>.parquet   one row per row that run published: 8-byte keys of its
                                       example_id, (input, output) pair and document, and a 64-byte
                                       MinHash sketch of its instruction and output without the passage
    .bonito/stats.json                 what each run added: rows, bytes and shards per task type,
                                       models, sampling, documents (the card's figures)

An append reads the stats and scans the index parts one row group at a time, checking only this
run's keys against them: memory is bounded by the night, and the bytes read are about 90 per
published row (the data shards are never read or rewritten). It writes its new shards, one index
part and the stats: a commit touches the night's files only, like a Delta Lake or Iceberg commit.
A dataset published before the index existed is indexed once from its shards (`index_existing`).

Near-duplicates: the sketch is the first SKETCH_PERM values of the row's MinHash (minhash.py) over
the word 5-grams of input + output minus those of its own passage, truncated to 16 bits. LSH bands
over the sketch find the candidates; a candidate whose sketch agrees on at least `threshold` of its
values is a near-duplicate (the estimate's standard error at J=0.9 is about 0.05).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bonito_tasks import minhash
from bonito_tasks.contracts import canonical_json, sha256_hex

log = logging.getLogger(__name__)

HIDDEN_DIR = ".bonito"
INDEX_DIR = f"{HIDDEN_DIR}/index"
STATS_FILE = f"{HIDDEN_DIR}/stats.json"
SKETCH_PERM = 32
ROW_GROUP = 65_536  # index rows read at a time
INDEX = pa.schema([
    pa.field("id_key", pa.uint64(), nullable=False),
    pa.field("pair_key", pa.uint64(), nullable=False),
    pa.field("doc_key", pa.uint64(), nullable=False),
    pa.field("sketch", pa.binary(SKETCH_PERM * 2), nullable=False),
])


class SplitStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = 0
    num_bytes: int = 0  # Arrow bytes of the rows (dataset_info's num_bytes)
    download_size: int = 0  # Parquet bytes of the shards
    shards: list[str] = Field(default_factory=list)


class RunStats(BaseModel):
    """What one publish added to the dataset."""

    model_config = ConfigDict(extra="forbid")

    splits: dict[str, SplitStats] = Field(default_factory=dict)  # task type -> its new shards
    models: list[tuple[str, str]] = Field(default_factory=list)  # (model_id, model_revision)
    sampling: list[str] = Field(default_factory=list)
    documents: int = 0  # source documents the dataset did not list yet
    contributing: int = 0  # documents whose first rows these are
    media_types: dict[str, int] = Field(default_factory=dict)  # of those new documents


class DatasetStats(BaseModel):
    """`.bonito/stats.json`: every publish's contribution, in publish order."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    runs: dict[str, RunStats] = Field(default_factory=dict)  # tag (the run folder name) -> what it added

    def without(self, tag: str) -> DatasetStats:
        return DatasetStats(runs={t: r for t, r in self.runs.items() if t != tag})

    def with_run(self, tag: str, added: RunStats) -> DatasetStats:
        return DatasetStats(runs={**self.without(tag).runs, tag: added})

    def totals(self) -> RunStats:
        """The whole dataset, as one contribution."""
        total = RunStats()
        for run in self.runs.values():
            for task_type, split in run.splits.items():
                acc = total.splits.setdefault(task_type, SplitStats())
                acc.rows += split.rows
                acc.num_bytes += split.num_bytes
                acc.download_size += split.download_size
                acc.shards += split.shards
            total.models = sorted(set(total.models) | set(run.models))
            total.sampling = sorted(set(total.sampling) | set(run.sampling))
            total.documents += run.documents
            total.contributing += run.contributing
            for media_type, count in run.media_types.items():
                total.media_types[media_type] = total.media_types.get(media_type, 0) + count
        total.splits = dict(sorted(total.splits.items()))
        return total

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=1).encode()


def index_part_path(tag: str) -> str:
    return f"{INDEX_DIR}/part-{tag}.parquet"


def key64(values: list[str]) -> np.ndarray:
    """8-byte keys: the first 16 hex digits of each value's sha256 (a value that is already a
    sha256 hex, like example_id and doc_id, is hashed again: one rule for all)."""
    return np.array([int(sha256_hex(v)[:16], 16) for v in values], dtype=np.uint64)


def sort_keys(example_ids: list[str]) -> np.ndarray:
    """The first 16 hex digits of each example_id (a sha256 hex) as a number: sorted stably by it,
    rows are in example_id order, but for ids sharing those digits (about one pair in 2**64 / n**2),
    which stay in the order given."""
    return np.array([int(i[:16], 16) for i in example_ids], dtype=np.uint64)


def pair_keys(inputs: list[str], outputs: list[str]) -> np.ndarray:
    return key64([canonical_json([i, o]) for i, o in zip(inputs, outputs)])


def sketches(rows: pa.Table, contexts: Mapping[str, str]) -> np.ndarray:
    """(rows x SKETCH_PERM) uint16: MinHash of input + output without the row's passage
    (`contexts`: chunk_id -> chunk text; a row whose passage is unknown is sketched whole)."""
    n = rows.num_rows
    if not n:
        return np.zeros((0, SKETCH_PERM), dtype=np.uint16)
    texts = [f"{i}\n{o}" for i, o in zip(rows["input"].to_pylist(), rows["output"].to_pylist())]
    shingled = minhash.shingles(texts)
    chunk_ids = rows["chunk_id"].to_pylist()
    passages = {c: np.unique(minhash.shingles([contexts[c]]).hashes) for c in set(chunk_ids) if contexts.get(c)}
    hashes, offsets = [], [0]
    for i, chunk_id in enumerate(chunk_ids):
        own = shingled.hashes[shingled.offsets[i]:shingled.offsets[i + 1]]
        passage = passages.get(chunk_id)
        kept = own if passage is None else own[~np.isin(own, passage)]
        hashes.append(kept)
        offsets.append(offsets[-1] + len(kept))
    stripped = minhash.Shingles(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
                                np.asarray(offsets, dtype=np.int64))
    return (minhash.signatures(stripped)[:, :SKETCH_PERM] & 0xFFFF).astype(np.uint16)


@dataclass(frozen=True)
class RowKeys:
    """What an append checks and indexes of some rows, one entry per row (88 bytes): the keys of
    their example_id, (input, output) pair and document, and their sketches."""

    ids: np.ndarray  # uint64
    pairs: np.ndarray  # uint64
    docs: np.ndarray  # uint64
    sketches: np.ndarray  # (rows x SKETCH_PERM) uint16

    @classmethod
    def of(cls, rows: pa.Table, contexts: Mapping[str, str]) -> RowKeys:
        """The keys of `rows` (EXAMPLES columns); `contexts` as for `sketches`."""
        return cls(key64(rows["example_id"].to_pylist()),
                   pair_keys(rows["input"].to_pylist(), rows["output"].to_pylist()),
                   key64(rows["doc_id"].to_pylist()), sketches(rows, contexts))

    @classmethod
    def concat(cls, parts: list[RowKeys]) -> RowKeys:
        if not parts:
            empty = np.zeros(0, np.uint64)
            return cls(empty, empty, empty, np.zeros((0, SKETCH_PERM), np.uint16))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "pairs", "docs", "sketches")))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> RowKeys:
        """The keys of `rows` (indices or a boolean mask), in that order."""
        return RowKeys(self.ids[rows], self.pairs[rows], self.docs[rows], self.sketches[rows])

    def index_table(self) -> pa.Table:
        """These rows as index rows."""
        return pa.table({
            "id_key": pa.array(self.ids, pa.uint64()),
            "pair_key": pa.array(self.pairs, pa.uint64()),
            "doc_key": pa.array(self.docs, pa.uint64()),
            "sketch": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(SKETCH_PERM * 2), len(self), [None, pa.py_buffer(np.ascontiguousarray(self.sketches))]),
        }, schema=INDEX)


def index_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP, compression="zstd")
    return sink.getvalue()


def readable(data: bytes) -> bool:
    """Whether an index part is a Parquet file of the index's schema."""
    try:
        return pq.read_schema(io.BytesIO(data)).remove_metadata() == INDEX
    except (pa.ArrowException, OSError):
        return False


def _band_keys(sketched: np.ndarray, threshold: float) -> np.ndarray:
    bands, rows = minhash.lsh_params(threshold, SKETCH_PERM)
    return minhash.band_keys(sketched, bands, rows)


@dataclass
class Seen:
    """What the history holds of the night's rows: per night row, whether its id, pair or
    document key is there and whether it nearly repeats a published row."""

    ids: np.ndarray
    pairs: np.ndarray
    docs: np.ndarray
    near: np.ndarray
    rows_scanned: int = 0


class _Keys:
    """The night's keys sorted once: a history batch is looked up by binary search (no hashing of
    the history)."""

    PREFIX_BITS = 20  # a bitmap of the keys' top bits (128 KiB) filters a batch before the search

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.shift = np.uint64(64 - self.PREFIX_BITS)
        self.present = np.zeros(1 << self.PREFIX_BITS, dtype=bool)
        self.present[keys >> self.shift] = True

    def pairs(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history index, night row) of every equal pair."""
        candidates = np.flatnonzero(self.present[np.asarray(values, dtype=np.uint64) >> self.shift])
        lo = np.searchsorted(self.sorted, values[candidates], side="left")
        hi = np.searchsorted(self.sorted, values[candidates], side="right")
        found = np.flatnonzero(hi > lo)
        history, lo, hi = candidates[found], lo[found], hi[found]
        if not len(history):
            return history, history
        counts = hi - lo
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return np.repeat(history, counts), self.order[starts]


def check_history(parts: Iterator[bytes], night: RowKeys, threshold: float | None) -> Seen:
    """Scan the index parts (one row group in memory at a time) for the night's keys."""
    n, night_sketches = len(night), night.sketches
    keys = {"id_key": _Keys(night.ids), "pair_key": _Keys(night.pairs), "doc_key": _Keys(night.docs)}
    seen = Seen(np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))
    marks = {"id_key": seen.ids, "pair_key": seen.pairs, "doc_key": seen.docs}
    bands = [_Keys(column) for column in _band_keys(night_sketches, threshold).T] \
        if threshold is not None and n else []
    heads = _BandHeads(night_sketches, threshold) if bands and threshold is not None else None
    for data in parts:
        reader = pq.ParquetFile(io.BytesIO(data))
        for batch in reader.iter_batches(batch_size=ROW_GROUP):
            seen.rows_scanned += batch.num_rows
            for column, sorted_keys in keys.items():
                marks[column][sorted_keys.pairs(batch.column(column).to_numpy())[1]] = True
            if heads is not None and threshold is not None:  # only with a threshold
                history = _sketch_matrix(batch.column("sketch"))
                candidates = heads.candidates(history)  # the few rows whose band keys may match
                history_bands = _band_keys(history[candidates], threshold)
                for band, sorted_keys in enumerate(bands):
                    found, night_rows = sorted_keys.pairs(history_bands[:, band])
                    rows = candidates[found]
                    todo = ~seen.near[night_rows]
                    rows, night_rows = rows[todo], night_rows[todo]
                    if len(rows):
                        agree = (history[rows] == night_sketches[night_rows]).mean(axis=1) >= threshold
                        seen.near[night_rows[agree]] = True
    return seen


class _BandHeads:
    """A bitmap of the first 20 bits of each band of the night's sketches: a history row can share a
    band with a night row only where its own bits are set, so band keys are computed for those
    rows alone (about 1 in 200 for a night of 5,000 rows)."""

    def __init__(self, sketched: np.ndarray, threshold: float):
        bands, self.rows = minhash.lsh_params(threshold, SKETCH_PERM)
        self.starts = [band * self.rows for band in range(bands)]
        self.present = [np.zeros(1 << 20, dtype=bool) for _ in self.starts]
        for start, present in zip(self.starts, self.present):
            present[self._heads(sketched, start)] = True

    def _heads(self, sketched: np.ndarray, start: int) -> np.ndarray:
        head = sketched[:, start].astype(np.uint32) << 4
        return head | (sketched[:, start + 1] >> 12) if self.rows > 1 else head

    def candidates(self, sketched: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(sketched), dtype=bool)
        for start, present in zip(self.starts, self.present):
            hit |= present[self._heads(sketched, start)]
        return np.flatnonzero(hit)


def near_within(sketched: np.ndarray, keep: np.ndarray, threshold: float) -> np.ndarray:
    """Per row: whether it nearly repeats an earlier row that is kept (rows in publish order). Only
    kept rows that share a band key with another kept row are compared, in order, each with the
    kept rows of its bands at once. Memory: a group number per kept row and band, and the lists
    of the kept rows that share a band."""
    near = np.zeros(len(sketched), dtype=bool)
    kept = np.flatnonzero(keep)
    if len(kept) < 2:
        return near
    bands = _band_keys(sketched[kept], threshold)
    groups = np.empty(bands.shape, dtype=np.int64)  # per kept row and band: its band key's number
    shared = np.zeros(len(kept), dtype=bool)
    numbered = 0
    for band, column in enumerate(bands.T):
        keys, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
        groups[:, band] = inverse + numbered
        numbered += len(keys)
        shared |= counts[inverse] > 1
    members: dict[int, list[int]] = {}  # group number -> the rows kept so far that are in it
    rows, groups = kept[shared], groups[shared]
    for start in range(0, len(rows), 4_096):  # as Python ints a batch at a time
        for row, row_groups in zip(rows[start:start + 4_096].tolist(), groups[start:start + 4_096].tolist()):
            candidates = [j for group in row_groups for j in members.get(group, ())]
            if candidates and ((sketched[candidates] == sketched[row]).mean(axis=1) >= threshold).any():
                near[row] = True
                continue
            for group in row_groups:
                members.setdefault(group, []).append(row)
    return near


def _sketch_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not len(column):
        return np.zeros((0, SKETCH_PERM), dtype=np.uint16)
    buffer = column.buffers()[1]
    data = np.frombuffer(buffer, dtype=np.uint16, count=(column.offset + len(column)) * SKETCH_PERM)
    return data[column.offset * SKETCH_PERM:].reshape(len(column), SKETCH_PERM)
