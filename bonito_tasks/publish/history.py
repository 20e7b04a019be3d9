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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


SKETCH_BATCH = 4_096  # rows sketched at a time: bounds the shingle arrays (about 2 KB a row)
_SALT = np.uint64(0x9E3779B97F4A7C15)


def sketches(rows: pa.Table, contexts: Mapping[str, str]) -> np.ndarray:
    """(rows x SKETCH_PERM) uint16: MinHash of input + output without the row's passage
    (`contexts`: chunk_id -> chunk text; a row whose passage is unknown is sketched whole)."""
    out = np.zeros((rows.num_rows, SKETCH_PERM), dtype=np.uint16)
    for start in range(0, rows.num_rows, SKETCH_BATCH):
        batch = rows.slice(start, SKETCH_BATCH)
        texts = [f"{i}\n{o}" for i, o in zip(batch["input"].to_pylist(), batch["output"].to_pylist())]
        stripped = _without_passages(minhash.shingles(texts), batch["chunk_id"].to_pylist(), contexts)
        out[start:start + batch.num_rows] = minhash.signatures(stripped)[:, :SKETCH_PERM] & 0xFFFF
    return out


def _without_passages(shingled: minhash.Shingles, chunk_ids: list[str], contexts: Mapping[str, str]
                      ) -> minhash.Shingles:
    """Each text's shingles less those of its passage (`contexts[chunk_id]`), in one hash lookup for
    the batch: a (passage, shingle) pair is one 64-bit key, the shingle's hash xor a salt per passage
    (a false match needs two 64-bit hashes to agree)."""
    known = sorted({c for c in chunk_ids if contexts.get(c)})
    if not known:
        return shingled
    number = {c: i for i, c in enumerate(known)}
    salts = np.arange(1, len(known) + 1, dtype=np.uint64) * _SALT
    passages = minhash.shingles([contexts[c] for c in known])
    passage_keys = passages.hashes ^ np.repeat(salts, passages.counts())
    owner = np.array([number.get(c, -1) for c in chunk_ids], dtype=np.int64)
    counts = shingled.counts()
    has_passage = np.repeat(owner >= 0, counts)
    keys = shingled.hashes ^ np.repeat(salts[np.maximum(owner, 0)], counts)
    drop = pc.is_in(pa.array(keys), value_set=pa.array(passage_keys)).to_numpy(zero_copy_only=False) & has_passage
    kept_counts = counts - np.bincount(np.repeat(np.arange(len(counts)), counts)[drop], minlength=len(counts))
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(kept_counts, out=offsets[1:])
    return minhash.Shingles(shingled.hashes[~drop], offsets)


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
    def empty(cls, n: int) -> RowKeys:
        return cls(np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64),
                   np.empty((n, SKETCH_PERM), np.uint16))

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


@dataclass(frozen=True)
class NightKeys:
    """The keys of a night's rows in the order they were read (`keys`), and that order sorted by
    example_id (`order`: row numbers, publish order)."""

    keys: RowKeys
    order: np.ndarray

    @classmethod
    def read(cls, parts: Iterable[pa.Table], rows: int, contexts: Callable[[pa.Table], Mapping[str, str]]) -> NightKeys:
        """The keys of `rows` rows yielded a part at a time (`contexts(part)`: as for `sketches`),
        filled into arrays sized once: 88 bytes a row, then 8 for the order."""
        keys, places, start = RowKeys.empty(rows), np.empty(rows, np.uint64), 0
        for part in parts:
            end = start + part.num_rows
            if end > rows:
                raise ValueError(f"the night holds more than the {rows} rows it was said to hold")
            own = RowKeys.of(part, contexts(part))
            for field in ("ids", "pairs", "docs", "sketches"):
                getattr(keys, field)[start:end] = getattr(own, field)
            places[start:end] = sort_keys(part["example_id"].to_pylist())
            start = end
        if start != rows:
            raise ValueError(f"the night holds {start} rows, not the {rows} it was said to hold")
        return cls(keys, np.argsort(places, kind="stable"))

    def in_order(self, rows: np.ndarray) -> np.ndarray:
        """The rows of a boolean mask over `keys`, in publish order."""
        return self.order[rows[self.order]]


def write_index(keys: RowKeys, rows: np.ndarray, path: Path) -> Path:
    """An index part of the rows `rows` of `keys` (in that order), written to `path` a row group at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, INDEX, compression="zstd") as writer:
        for start in range(0, len(rows), ROW_GROUP):
            writer.write_table(keys.take(rows[start:start + ROW_GROUP]).index_table(), row_group_size=ROW_GROUP)
    return path


def index_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP, compression="zstd")
    return sink.getvalue()


def readable(data: bytes) -> bool:
    """Whether an index part is a Parquet file of the index's schema."""
    try:
        return pq.read_schema(pa.BufferReader(data)).remove_metadata() == INDEX
    except (pa.ArrowException, OSError):
        return False


def _band_keys(sketched: np.ndarray, threshold: float, rows: np.ndarray | None = None) -> np.ndarray:
    """(rows x bands) uint32: the top half of each LSH band key of the sketches (of `rows` only,
    when given), computed ROW_GROUP rows at a time. A false match of 32 bits costs one comparison
    of sketches, never a wrong answer."""
    bands, per_band = minhash.lsh_params(threshold, SKETCH_PERM)
    n = len(sketched) if rows is None else len(rows)
    keys = np.empty((n, bands), dtype=np.uint32)
    for start in range(0, n, ROW_GROUP):
        block = sketched[start:start + ROW_GROUP] if rows is None else sketched[rows[start:start + ROW_GROUP]]
        keys[start:start + len(block)] = minhash.band_keys(block, bands, per_band) >> np.uint64(32)
    return keys


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
    """The night's keys (unsigned integers) sorted once: a history batch is looked up by binary
    search (no hashing of the history). Memory: the sorted keys and a uint32 row number each."""

    MAX_PREFIX_BITS = 20  # a bitmap of the keys' top bits (at most 1 MiB) filters a batch before the search

    def __init__(self, keys: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.sorted = keys[order]
        self.order = order.astype(np.uint32) if len(keys) < 2**32 else order
        del order
        self.dtype = keys.dtype
        # about 1 in 8 of the bitmap set: small enough to stay in cache, selective enough to search little
        self.bits = min(self.MAX_PREFIX_BITS, max(8, len(keys).bit_length() + 3))
        self.present = np.zeros(1 << self.bits, dtype=bool)
        self.present[self._prefixes(keys)] = True

    def _prefixes(self, values: np.ndarray) -> np.ndarray:
        """The top `bits` bits of each key (of a uint64 key: from its high 32-bit word, half
        the work of shifting the whole key)."""
        if values.dtype == np.uint64 and values.flags.c_contiguous:
            words = values.view(np.uint32)
            return (words[1::2] if np.little_endian else words[0::2]) >> np.uint32(32 - self.bits)
        return values >> values.dtype.type(8 * values.dtype.itemsize - self.bits)

    def pairs(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history index, night row) of every equal pair."""
        values = np.asarray(values, dtype=self.dtype)
        candidates = np.flatnonzero(self.present[self._prefixes(values)])
        lo = np.searchsorted(self.sorted, values[candidates], side="left")
        hi = np.searchsorted(self.sorted, values[candidates], side="right")
        found = np.flatnonzero(hi > lo)
        history, lo, hi = candidates[found], lo[found], hi[found]
        if not len(history):
            return history, history
        counts = hi - lo
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return np.repeat(history, counts), self.order[starts].astype(np.int64)


def check_history(parts: Iterator[bytes], night: RowKeys, threshold: float | None) -> Seen:
    """Scan the index parts (one row group in memory at a time) for the night's keys."""
    n, night_sketches = len(night), night.sketches
    keys = {"id_key": _Keys(night.ids), "pair_key": _Keys(night.pairs), "doc_key": _Keys(night.docs)}
    seen = Seen(np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))
    marks = {"id_key": seen.ids, "pair_key": seen.pairs, "doc_key": seen.docs}
    bands = [_Keys(np.ascontiguousarray(column)) for column in _band_keys(night_sketches, threshold).T] \
        if threshold is not None and n else []
    heads = _BandHeads(night_sketches, threshold) if bands and threshold is not None else None
    for data in parts:
        reader = pq.ParquetFile(pa.BufferReader(data))  # zero-copy reads of the bytes
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
    """A bitmap of a 20-bit head of each band of the night's sketches (_heads): a history row can share
    a band with a night row only where its own head is set, so band keys are computed for those
    rows alone (about 1 in 200 for a night of 5,000 rows)."""

    def __init__(self, sketched: np.ndarray, threshold: float):
        bands, self.rows = minhash.lsh_params(threshold, SKETCH_PERM)
        self.starts = [band * self.rows for band in range(bands)]
        self.present = [np.zeros(1 << 20, dtype=bool) for _ in self.starts]
        for start, present in zip(self.starts, self.present):
            present[self._heads(sketched, start)] = True

    def _heads(self, sketched: np.ndarray, start: int) -> np.ndarray:
        """20 bits hashed from the band's first values (up to four, read as two 32-bit words): rows
        that share the band share its head; rows that only share a value or two (common in templated
        text) mostly do not."""
        words = self._words(sketched, start)
        head = words[0] * np.uint32(0x9E3779B1)
        if len(words) > 1:
            head ^= words[1]
        return head >> np.uint32(12)

    def _words(self, sketched: np.ndarray, start: int) -> list[np.ndarray]:
        """The band's first values as 32-bit words (value start + 2i in the low half of word i): of
        an aligned row, views; else built from the values. A band of one value is one word of it."""
        if self.rows < 2:
            return [sketched[:, start].astype(np.uint32)]
        n = min(self.rows, 4) // 2
        if start % 2 == 0 and np.little_endian and sketched.flags.c_contiguous:
            view = sketched.view(np.uint32)
            return [view[:, start // 2 + i] for i in range(n)]
        return [sketched[:, start + 2 * i].astype(np.uint32) | (sketched[:, start + 2 * i + 1].astype(np.uint32) << 16)
                for i in range(n)]

    def candidates(self, sketched: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(sketched), dtype=bool)
        for start, present in zip(self.starts, self.present):
            hit |= present[self._heads(sketched, start)]
        return np.flatnonzero(hit)


def near_within(sketched: np.ndarray, rows: np.ndarray, threshold: float) -> np.ndarray:
    """Per row of `rows` (row numbers of `sketched`, in publish order): whether it nearly repeats
    an earlier row of `rows` that is not itself such a repeat. Only rows that share a band key with
    another are compared, in order, each with the rows kept so far of its bands at once. Memory: a
    group number per row and band, and the lists of the rows kept that share a band."""
    near = np.zeros(len(rows), dtype=bool)
    if len(rows) < 2:
        return near
    bands = _band_keys(sketched, threshold, rows)
    # per row and band: its band key's number
    groups = np.empty(bands.shape, dtype=np.int64 if bands.size >= 2**31 else np.int32)
    shared = np.zeros(len(rows), dtype=bool)
    numbered = 0
    for band in range(bands.shape[1]):
        keys, inverse, counts = np.unique(bands[:, band], return_inverse=True, return_counts=True)
        groups[:, band] = inverse + numbered
        numbered += len(keys)
        shared |= counts[inverse] > 1
    del bands
    members: dict[int, list[int]] = {}  # group number -> the rows kept so far that are in it
    positions, groups = np.flatnonzero(shared), groups[shared]
    for start in range(0, len(positions), 4_096):  # as Python ints a batch at a time
        for position, row_groups in zip(positions[start:start + 4_096].tolist(),
                                        groups[start:start + 4_096].tolist()):
            row = int(rows[position])
            candidates = [j for group in row_groups for j in members.get(group, ())]
            if candidates and ((sketched[candidates] == sketched[row]).mean(axis=1) >= threshold).any():
                near[position] = True
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
