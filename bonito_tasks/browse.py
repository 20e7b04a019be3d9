"""Read one run's artifacts for people: the tables of a run a page at a time, the manifests that
cannot be read (an older version wrote them), and the answer span of an example.

What the Dataset view (plugins/bonito_airflow/view) shows comes from here. Nothing loads a whole
table: a page reads the Parquet footers, at most one narrow column per part when it filters or
counts by a column, and then only the row groups that hold the page's rows (writers cut row groups
of `store.ROW_GROUP_ROWS` rows). On S3 each of those is a ranged GET.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from bonito_tasks.contracts import (
    MANIFEST_NAME,
    REPLACED_PREFIX,
    SCHEMA_VERSION,
    TABLES,
    CompareMetrics,
    DriftCheck,
    Manifest,
    RunRef,
    StageName,
)
from bonito_tasks.release import DRIFT_FILE, PLOT_FILE, REPORT_FILE
from bonito_tasks.store import ArtifactStore, run_prefix

# Where each table's parts live, in the order a person reads them. `examples` are the validated
# rows once validate committed, else the generated ones (the parts of the generate shards).
TABLE_STAGES: dict[str, tuple[StageName, ...]] = {
    "rejects": (StageName.EXTRACT,),
    "examples": (StageName.VALIDATE, StageName.GENERATE),
    "quarantine": (StageName.VALIDATE,),
    "dropped_generations": (StageName.GENERATE,),
}
# The column a table is filtered and counted by (the facet), and the columns a page shows.
FACETS = {"rejects": "reason", "examples": "task_type", "quarantine": "failed_expectations",
          "dropped_generations": "reason"}
COLUMNS = {
    "rejects": ["source_uri", "reason", "detail", "size_bytes"],
    "examples": ["example_id", "task_type", "input", "output", "doc_id", "chunk_id", "sample_index"],
    "quarantine": ["example_id", "task_type", "input", "output", "failed_expectations", "chunk_id"],
    "dropped_generations": ["chunk_id", "task_type", "sample_index", "reason", "generated_text"],
}
MAX_PAGE_ROWS = 100
READ_THREADS = 16  # parts read at once (a run has one part per generate shard and table)
MAX_CELL_CHARS = 20_000  # a cell longer than this is cut (a generation can be long; a page stays small)
# Task types whose output is a span of the passage: the view marks it in the input.
SPAN_TASKS = ("exqa",)


class UnknownTable(ValueError):
    pass


@dataclass
class Page:
    table: str
    stage: str | None  # the stage folder the rows come from (None: no part yet)
    rows: list[dict[str, Any]]
    offset: int
    limit: int
    total: int  # rows matching the filter, over all parts
    facet: str
    facet_counts: dict[str, int] = field(default_factory=dict)  # facet value -> rows (all parts)
    value: str | None = None  # the facet value filtered on

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.rows) < self.total


def table_parts(store: ArtifactStore, run: RunRef, table: str) -> tuple[str | None, list[str]]:
    """(stage, keys) of the Parquet parts of `table` in the run: those of the first stage in
    TABLE_STAGES that holds any. A committed stage's are the parts its manifest lists; before it
    commits, those on disk, for the tables UNCOMMITTED allows (a failed validate leaves its
    quarantine, but the examples its partitions passed are not validated until the run's verdict)."""
    if table not in TABLE_STAGES:
        raise UnknownTable(f"unknown table {table!r}; known: {', '.join(TABLE_STAGES)}")
    for stage in TABLE_STAGES[table]:
        keys = _stage_parts(store, run, stage, table)
        if keys:
            return stage, keys
    return None, []


UNCOMMITTED: dict[str, tuple[str, ...]] = {StageName.VALIDATE: ("quarantine",)}


def _stage_parts(store: ArtifactStore, run: RunRef, stage: str, table: str) -> list[str]:
    prefix = f"{run_prefix(run)}/{stage}"
    if store.exists(f"{prefix}/{MANIFEST_NAME}"):
        try:
            manifest = store.read_manifest(f"{prefix}/{MANIFEST_NAME}")
        except (ValidationError, ValueError):  # an older version's manifest: what is on disk
            pass
        else:
            return [f"{prefix}/{ref.path}" for ref in manifest.shards_of(table)]
    if stage in UNCOMMITTED and table not in UNCOMMITTED[stage]:
        return []
    keys = [k for k in store.list(prefix) if k.endswith(f".{table}.parquet")]
    # A partition's parts the reduce wrote again replace the partition's own.
    replaced = {m.group(1) for k in keys if (m := re.search(rf"/{REPLACED_PREFIX}([^/]+)/", k))}
    return [k for k in keys if not any(f"{prefix}/{folder}/" in k for folder in replaced)]


def read_page(store: ArtifactStore, run: RunRef, table: str, *, offset: int = 0, limit: int = 20,
              value: str | None = None, known_counts: dict[str, int] | None = None) -> Page:
    """Rows [offset, offset+limit) of `table` (filtered on its facet column equal to, or for a list
    column containing, `value`), with the row count per facet value.

    `known_counts` (rows per facet value, as the run's metrics recorded them) spares an unfiltered
    page the scan of every part: the parts are read in order only until the page is full."""
    offset, limit = max(0, offset), max(1, min(limit, MAX_PAGE_ROWS))
    facet = FACETS[table]
    stage, keys = table_parts(store, run, table)
    page = Page(table=table, stage=stage, rows=[], offset=offset, limit=limit, total=0, facet=facet, value=value)
    counts: Counter = Counter()
    wanted: list[tuple[_Part, np.ndarray]] = []
    known = known_counts is not None and value is None
    for part in _scan_in_order(store, keys, until=lambda: offset + limit <= page.total) if known \
            else _scan(store, keys, facet):
        if part.facet_values is not None:
            counts.update(_value_counts(part.facet_values))
        if value is None:
            matching, n = None, part.metadata.num_rows
        else:
            matching = (_matching(part.facet_values, value) if part.facet_values is not None
                        else np.array([], np.int64))
            n = len(matching)
        start = page.total
        page.total += n
        need = limit - sum(len(indices) for _, indices in wanted)
        if need <= 0 or offset >= page.total:
            continue
        first = max(0, offset - start)
        local = np.arange(first, min(n, first + need), dtype=np.int64)
        wanted.append((part, local if matching is None else matching[local]))
    for rows in _parallel(lambda item: _read_rows(store, item[0], item[1], COLUMNS[table]), wanted):
        page.rows += [_clip(row) for row in rows]
    if known and known_counts is not None:
        counts, page.total = Counter(known_counts), sum(known_counts.values())
    page.facet_counts = dict(counts.most_common())
    return page


@dataclass
class Samples:
    table: str
    stage: str | None
    rows: dict[str, tuple[int, list[dict[str, Any]]]]  # facet value -> (rows with it, the first few)


def facet_samples(store: ArtifactStore, run: RunRef, table: str, per_value: int) -> Samples:
    """The first `per_value` rows of each facet value (e.g. each task type) and every value's count,
    reading the facet column and then only the row groups holding the chosen rows."""
    facet = FACETS[table]
    stage, keys = table_parts(store, run, table)
    counts: Counter = Counter()
    wanted: list[tuple[_Part, np.ndarray, list[str]]] = []
    for part in _scan(store, keys, facet):
        if part.facet_values is None:
            continue
        part_counts = _value_counts(part.facet_values)
        picks: dict[int, str] = {}
        for value in sorted(part_counts):
            need = per_value - min(counts[value], per_value)  # rows of earlier parts come first
            if need > 0:
                picks.update({int(i): value for i in _matching(part.facet_values, value)[:need]})
        counts.update(part_counts)
        if picks:
            indices = np.array(sorted(picks), dtype=np.int64)
            wanted.append((part, indices, [picks[int(i)] for i in indices]))
    chosen: dict[str, list[dict[str, Any]]] = {}
    results = _parallel(lambda item: _read_rows(store, item[0], item[1], COLUMNS[table]), wanted)
    for (_, _, values), rows in zip(wanted, results):
        for value, row in zip(values, rows):
            chosen.setdefault(value, []).append(_clip(row))
    return Samples(table=table, stage=stage,
                   rows={value: (count, chosen.get(value, [])) for value, count in counts.most_common()})


@dataclass
class _Part:
    key: str
    metadata: Any  # pyarrow.parquet.FileMetaData: read once, reused to read rows
    names: list[str]
    facet_values: pa.ChunkedArray | None


def _read_part(store: ArtifactStore, key: str, facet: str | None) -> _Part:
    """A part's footer, and its facet column when `facet` is given (on S3 one or two requests)."""
    with store.open_read(key) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        values = parquet.read(columns=[facet]).column(0) if facet in names else None
        return _Part(key=key, metadata=parquet.metadata, names=names, facet_values=values)


def _scan(store: ArtifactStore, keys: list[str], facet: str) -> list[_Part]:
    """Each part's footer and facet column, read concurrently."""
    return _parallel(lambda key: _read_part(store, key, facet), keys)


def _scan_in_order(store: ArtifactStore, keys: list[str], until: Callable[[], bool]) -> Iterator[_Part]:
    """Each part's footer, in order, until `until()`: the first part alone (it often holds the page),
    then READ_THREADS parts at a time."""
    batches = [keys[:1]] + [keys[first:first + READ_THREADS] for first in range(1, len(keys), READ_THREADS)]
    for batch in batches:
        if until():
            return
        yield from _parallel(lambda key: _read_part(store, key, None), batch)


def _read_rows(store: ArtifactStore, part: _Part, indices: np.ndarray, columns: list[str]) -> list[dict[str, Any]]:
    with store.open_read(part.key) as handle:
        parquet = pq.ParquetFile(handle, metadata=part.metadata)
        return _take(parquet, indices, [c for c in columns if c in part.names]).to_pylist()


def _parallel(fn, items: list) -> list:
    """fn over items in order, on up to READ_THREADS threads (Arrow and boto3 release the GIL)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def _clip(row: dict[str, Any]) -> dict[str, Any]:
    return {name: cell[:MAX_CELL_CHARS] + " [...]" if isinstance(cell, str) and len(cell) > MAX_CELL_CHARS else cell
            for name, cell in row.items()}


def _value_counts(values: pa.ChunkedArray) -> Counter:
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    return Counter({c["values"]: c["counts"] for c in pc.value_counts(values).to_pylist()
                    if c["values"] is not None})


def _matching(values: pa.ChunkedArray, value: str) -> np.ndarray:
    """Row indexes where the column equals `value` (a list column: contains it)."""
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        hits = pc.is_in(pc.list_flatten(values), value_set=pa.array([value]))
        parents = pc.list_parent_indices(values).to_numpy()
        return np.unique(parents[hits.to_numpy(zero_copy_only=False)])
    mask = pc.fill_null(pc.equal(values, pa.scalar(value)), False)
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False)).astype(np.int64)


def _take(parquet: pq.ParquetFile, indices: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows at `indices` (sorted) of a Parquet file, reading only the row groups that hold them."""
    meta = parquet.metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    pieces = []
    for group in np.unique(np.searchsorted(starts, indices, side="right") - 1):
        inside = indices[(indices >= starts[group]) & (indices < starts[group + 1])] - starts[group]
        pieces.append(parquet.read_row_group(int(group), columns=columns).take(pa.array(inside)))
    schema = pa.schema([_field(c) for c in columns])
    return pa.concat_tables([p.cast(schema) for p in pieces]) if pieces else schema.empty_table()


def _field(name: str) -> pa.Field:
    """The contract field of a column name (the same name has the same type in every table)."""
    for schema in TABLES.values():
        if name in schema.names:
            return schema.field(name)
    raise KeyError(name)


def answer_span(task_type: str, text: str, answer: str) -> tuple[int, int] | None:
    """Where the answer of an extractive task sits in its input (exact, else ignoring case and
    runs of spaces); None for other task types or when it is not there."""
    answer = answer.strip()
    if task_type not in SPAN_TASKS or not answer:
        return None
    if (start := text.find(answer)) >= 0:
        return start, start + len(answer)
    pattern = r"\s+".join(re.escape(word) for word in answer.split())
    found = re.search(pattern, text, flags=re.IGNORECASE)
    return (found.start(), found.end()) if found else None


@dataclass
class ManifestProblem:
    key: str
    stage: str
    schema_version: int | None
    error: str
    counts: dict[str, int]


@dataclass
class Drift:
    """The compare stage's comparison of a run with the last release, as the view shows it."""

    comparison: CompareMetrics  # verdict, baseline, checks
    plot: str | None  # tonight beside the baseline: its path in the run's folder
    report: str | None  # the comparison's page (the checks and the plot)

    @property
    def flagged(self) -> list[DriftCheck]:
        """The checks that are not ok, failures first."""
        order = {"failure": 0, "warning": 1, "not_computed": 2}
        return sorted((c for c in self.comparison.checks if c.severity != "ok"), key=lambda c: order[c.severity])


def drift(store: ArtifactStore, run: RunRef) -> Drift | None:
    """The run's comparison with the last release (`compare/drift.json`, written also when it failed
    the run) with its plot and page; None before compare ran, or for a file another version wrote."""
    folder = f"{run_prefix(run)}/{StageName.COMPARE.value}"
    if not store.exists(f"{folder}/{DRIFT_FILE}"):
        return None
    try:
        comparison = CompareMetrics.model_validate_json(store.read_bytes(f"{folder}/{DRIFT_FILE}"))
    except ValidationError:
        return None
    plot, report = (f"{StageName.COMPARE.value}/{name}" if store.exists(f"{folder}/{name}") else None
                    for name in (PLOT_FILE, REPORT_FILE))
    return Drift(comparison, plot, report)


def manifest_problems(store: ArtifactStore, run: RunRef) -> list[ManifestProblem]:
    """Manifests of the run that this version cannot read (an older or newer version wrote them),
    with what can still be read of them: their stage, schema version and row counts."""
    problems = []
    for key in store.list(run_prefix(run)):
        if key.rsplit("/", 1)[-1] != MANIFEST_NAME:
            continue
        raw = store.read_bytes(key)
        try:
            Manifest.model_validate_json(raw)
            continue
        except (ValidationError, ValueError) as err:
            error = _first_error(err)
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        version = data.get("schema_version")
        older = f"written by schema version {version}, this version reads {SCHEMA_VERSION}: "
        problems.append(ManifestProblem(
            key=key, stage=str(data.get("stage", key.split("/")[-2])),
            schema_version=version if isinstance(version, int) else None,
            error=(older if version != SCHEMA_VERSION else "") + error,
            counts={k: v for k, v in (data.get("counts") or {}).items() if isinstance(v, int)},
        ))
    return problems


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{err.error_count()} field error(s), first {where or 'document'}: {first.get('msg')}"
    return f"{type(err).__name__}: {str(err)[:300]}"
