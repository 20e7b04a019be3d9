"""The validate stage, the reduce side: the run's verdict from its partitions' numbers.

Validate runs as one partition per generate shard (`ValidateShard`, shard.py: the GX row suite over
the shard, a window at a time; failing rows go to `quarantine` with the names of the expectations
they failed, the rest to `examples`) and this reduce, which reads only what the partitions
committed: their aggregates (`ValidateAggregate`) and pair keys (`example_keys`). It

- finds the (input, output) pairs that repeat a pair of an earlier shard, from the keys, a bucket
  of the key space at a time, and moves those rows to the quarantine (`unique_input_output`), as
  the whole-run check does (the first occurrence goes on): only the parts holding such a row are
  written again (under `replaced-shard-NNNNN/`);
- runs the dataset suite (pass rate, rows, duplicate rate, label share) on the run's numbers, the
  partitions' added up (`dataset_summary`), and builds one Data Docs site (the row suite's result
  added up over the partitions, and the dataset suite's) and one quality report;
- on success commits `examples` and `quarantine` as the union of the partitions' parts (those
  written again in their place); on failure commits nothing and raises ValidationFailed naming each
  breached threshold, its observed value and where the Data Docs are.

Either way the Data Docs (`data_docs/index.html`), the quality report (`report/`) and the full GX
result (`validation_result.json`) are written to the stage folder, and the quarantine stays
written. `check_examples` is the same check over one table in memory (tests and benchmarks
compare the two).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bonito_tasks.checks.data_docs import make_offline
from bonito_tasks.checks.gx import (
    SuiteRun,
    ValidationFailed,
    describe,
    ephemeral_context,
    run_suite,
    to_pandas,
)
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    EXAMPLES,
    REPLACED_PREFIX,
    CheckFindings,
    ExpectationOutcome,
    Manifest,
    RunRef,
    ShardRef,
    StageName,
    SuiteRef,
    ValidateAggregate,
    ValidateMetrics,
    sha256_hex,
)
from bonito_tasks.stage import PARTITION_PREFIX, CombineStage, StageWriter
from bonito_tasks.store import ArtifactStore, parquet_bytes
from bonito_tasks.validate.profile import normalize_label, row_profile
from bonito_tasks.validate.report import add_numbers, run_numbers, run_report
from bonito_tasks.validate.results import add_results, add_unexpected, failed_rows, portable_result, summaries
from bonito_tasks.validate.suites import (
    DATASET_SUITE,
    EXAMPLES_SUITE,
    SUITE_VERSION,
    build_dataset_suite,
    build_examples_suite,
    dataset_summary,
    example_expectations,
    label_tasks,
    shape_tasks,
)

SUITE = SuiteRef(name=EXAMPLES_SUITE, dataset_suite=DATASET_SUITE, version=SUITE_VERSION)
RESULT_FILE = "validation_result.json"
DOCS_DIR = "data_docs"
REPORT_DIR = "report"
ROWS_ASSET = "example_rows"  # the row suite's asset, as the Data Docs name it
UNIQUE_PAIR = "unique_input_output"
KEY_BUCKET_ROWS = 2_000_000  # pair keys held at once by the reduce (about 40 bytes each)


@dataclass(frozen=True)
class ExamplesCheck:
    """The outcome of both suites over one examples table."""

    rows: SuiteRun
    dataset: SuiteRun | None  # None when a contract expectation failed (thresholds are moot)
    failed_by_row: dict[int, list[str]]  # row index -> names of the row-level expectations it failed
    profile: pa.Table
    docs_dir: Path | None

    @property
    def passed(self) -> np.ndarray:
        return _passed(self.profile.num_rows, self.failed_by_row)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """What fails the run: contract expectations, else breached dataset thresholds."""
        contract = [e for e in self.rows.failed if e["level"] == "contract"]
        return contract or (self.dataset.failed if self.dataset else [])

    @property
    def success(self) -> bool:
        return not self.failed


@dataclass
class _Repeats:
    """Rows of one partition whose pair an earlier shard holds: positions in the generate shard,
    whether the partition passed them, their output lengths."""

    positions: np.ndarray
    passed: np.ndarray
    output_tokens: np.ndarray


class Validate(CombineStage):
    """The run's verdict over its validate partitions (see the module docstring)."""

    name = StageName.VALIDATE
    reads = (StageName.VALIDATE,)
    config_fields = frozenset({"task_types", "min_output_tokens", "max_input_tokens", "max_output_tokens",
                               "min_pass_rate", "min_rows", "max_duplicate_rate", "max_label_share"})

    def work(self, writer: StageWriter) -> ValidateMetrics:
        store, run, config, partitions = self.store, self.run, self.config, self.inputs
        started = time.perf_counter()
        shard_metrics = [m.metrics_as(ValidateMetrics) for m in partitions]
        total = ValidateAggregate()
        row_result: dict[str, Any] = {}
        for manifest, metrics in zip(partitions, shard_metrics, strict=True):
            if metrics.aggregate is None:
                raise ValueError(f"{manifest.uri} is not a validate partition (it holds no aggregate)")
            add_numbers(total, metrics.aggregate)
            row_result = add_results(row_result, metrics.aggregate.row_result)
        total.unit = next((m.aggregate.unit for m in shard_metrics if m.aggregate and m.aggregate.unit), "")
        total.labels = {task: total.labels.get(task, {}) for task in label_tasks(config)}
        findings = CheckFindings(dag_id=run.dag_id, run_id=run.run_id, suite=SUITE.name, suite_version=SUITE.version,
                                 rows=total.rows, generate_shards=len(partitions),
                                 dropped_generations=total.dropped_generations)
        if total.rows == 0:
            raise ValidationFailed(failure_message(findings), findings)

        replaced: dict[int, list[ShardRef]] = {}
        repeats = cross_shard_repeats(store, partitions)
        for index, found in sorted(repeats.items()):
            replaced[index] = self._requarantine(writer, partitions[index], found, total)
        cross = sum(len(found.positions) for found in repeats.values())
        row_result = add_unexpected(row_result, UNIQUE_PAIR, cross, True)
        order = _expectation_order(config)
        row_result["results"].sort(key=lambda e: order[e["expectation_config"]["meta"]["name"]])

        with tempfile.TemporaryDirectory(prefix="bonito-gx-docs-") as tmp:
            dataset = dataset_check(config, total, row_result, docs_dir=Path(tmp))
            docs_uri = _upload_dir(store, Path(tmp), f"{writer.prefix}/{DOCS_DIR}", "index.html")
        result_uri = store.write_bytes(f"{writer.prefix}/{RESULT_FILE}", json.dumps(
            {"rows": row_result, "dataset": dataset.result}, indent=2, default=str).encode())
        quality, files = run_report(total, label_tasks(config), total.unit or "tokens, estimated as bytes / 4")
        report_uris = {name: store.write_bytes(f"{writer.prefix}/{REPORT_DIR}/{name}", data)
                       for name, data in files.items()}
        quality = quality.model_copy(update={
            "data_docs_uri": docs_uri,
            "report_uri": report_uris.pop("quality.html"),
            "summary_uri": report_uris.pop("summary.json"),
            "plots": report_uris,
        })
        validation_s = sum(m.validation_s for m in shard_metrics) + time.perf_counter() - started
        if not dataset.success:
            if total.rows > total.passed:
                findings.quarantine_uri = f"{store.uri(writer.prefix)}/**/part-*.quarantine.parquet"
            findings = findings.model_copy(update={"failed": dataset.failed, "quarantined": quality.failed_expectations,
                                                   "data_docs_uri": docs_uri, "result_uri": result_uri})
            raise ValidationFailed(failure_message(findings), findings)

        own = {ref.path: ref for ref in writer.shards}
        writer.shards = []
        for index, manifest in enumerate(partitions):
            if index in replaced:
                writer.shards += replaced[index]
            else:
                writer.include(manifest.model_copy(update={"shards": [
                    ref for ref in manifest.shards if ref.table in ("examples", "quarantine")]}))
        assert all(ref.path in own or ref.path.startswith(PARTITION_PREFIX) for ref in writer.shards)
        return ValidateMetrics(
            examples_in=total.rows,
            passed=quality.passed,
            quarantined=quality.quarantined,
            suite=SUITE,
            expectations=[ExpectationOutcome(**e) for e in summaries(row_result) + dataset.expectations],
            validation_s=round(validation_s, 3),
            quality=quality,
        )

    def _requarantine(self, writer: StageWriter, partition: Manifest, found: _Repeats,
                      total: ValidateAggregate) -> list[ShardRef]:
        """Write a partition's parts again with the rows whose pair an earlier shard holds in the
        quarantine; adjust the run's numbers. Returns the partition's parts as the stage lists them."""
        store = self.store
        folder = store.key(partition.uri).rsplit("/", 1)[0]
        relative = folder[len(writer.prefix) + 1:]
        keys = store.read_table(partition, "example_keys", columns=["position", "passed"])
        passed = np.zeros(keys.num_rows, dtype=bool)
        passed[keys["position"].to_numpy()] = keys["passed"].to_numpy(zero_copy_only=False)
        moved = found.positions[found.passed]  # passed the row checks: now quarantined too
        rank_in_examples = np.cumsum(passed) - 1
        rank_in_quarantine = np.cumsum(~passed) - 1
        drop = set(rank_in_examples[moved].tolist())
        refs: list[ShardRef] = []
        moved_rows: list[pa.Table] = []
        offset = 0
        for index, ref in enumerate(partition.shards_of("examples")):
            local = [i - offset for i in range(offset, offset + ref.rows) if i in drop]
            offset += ref.rows
            if not local:
                refs.append(ref.model_copy(update={"path": f"{relative}/{ref.path}"}))
                continue
            part = store.read_shard(partition, "examples", index)
            keep = np.ones(part.num_rows, dtype=bool)
            keep[local] = False
            moved_rows.append(part.filter(pa.array(~keep)))
            refs.append(_write_part(writer, relative, "examples", part.filter(pa.array(keep)), index))

        quarantine = store.read_table(partition, "quarantine")
        names = quarantine["failed_expectations"].to_pylist()
        order = _expectation_order(self.config)
        for i in rank_in_quarantine[found.positions[~found.passed]].tolist():
            names[i] = sorted([*names[i], UNIQUE_PAIR], key=order.__getitem__)
        moved_table = pa.concat_tables(moved_rows) if moved_rows else EXAMPLES.empty_table()
        merged = pa.concat_tables([
            quarantine.set_column(quarantine.schema.get_field_index("failed_expectations"), "failed_expectations",
                                  pa.array(names, pa.list_(pa.string()))),
            moved_table.append_column("failed_expectations",
                                      pa.array([[UNIQUE_PAIR]] * moved_table.num_rows, pa.list_(pa.string()))),
        ])
        positions = np.concatenate([np.flatnonzero(~passed), moved]).astype(np.int64)
        refs.append(_write_part(writer, relative, "quarantine", merged.take(pa.array(np.argsort(positions,
                                                                                               kind="stable"))), 0))

        # The run's numbers: every such row repeats a pair; those that had passed no longer do.
        total.repeats += len(found.positions)
        total.failed_expectations[UNIQUE_PAIR] = total.failed_expectations.get(UNIQUE_PAIR, 0) + len(found.positions)
        total.passed -= len(moved)
        tokens = dict(zip(found.positions.tolist(), found.output_tokens.tolist(), strict=True))
        task_types = moved_table["task_type"].to_pylist()
        labels = normalize_label(pc.fill_null(moved_table["output"].combine_chunks(), "")).to_pylist()
        for position, task, label in zip(np.sort(moved).tolist(), task_types, labels, strict=True):
            kept, quarantined = total.lengths[task][tokens[position]]
            total.lengths[task][tokens[position]] = (kept - 1, quarantined + 1)
            if task in total.labels:
                total.labels[task][label] -= 1
                if not total.labels[task][label]:
                    del total.labels[task][label]
        return refs


def _expectation_order(config: RunConfig) -> dict[str, int]:
    """Row expectation name -> its place in the suite (the order of results and quarantine lists)."""
    order = {}
    for i, e in enumerate(example_expectations(config)):
        assert e.meta is not None  # every row expectation is built with its name in meta (suites.py)
        order[e.meta["name"]] = i
    return order


def cross_shard_repeats(store: ArtifactStore, partitions: list[Manifest]) -> dict[int, _Repeats]:
    """Partition index -> its rows whose (input, output) pair an earlier partition holds.

    The keys are read a bucket of the key space at a time (each partition's keys are sorted, so a
    bucket reads only the row groups that overlap it): the reduce holds about KEY_BUCKET_ROWS keys,
    whatever the size of the run."""
    rows = sum(m.rows_of("example_keys") for m in partitions)
    buckets = max(1, math.ceil(rows / KEY_BUCKET_ROWS))
    edges = [b * (1 << 64) // buckets for b in range(buckets)] + [1 << 64]
    found: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for low, high in zip(edges[:-1], edges[1:]):
        pieces = []
        for index, manifest in enumerate(partitions):
            for ref in manifest.shards_of("example_keys"):
                piece = _keys_between(store, manifest, ref, low, high)
                if piece.num_rows:
                    pieces.append(piece.append_column("partition", pa.array(np.full(piece.num_rows, index, np.int64))))
        if not pieces:
            continue
        keys = pa.concat_tables(pieces)
        hi, lo = keys["key_hi"].to_numpy(), keys["key_lo"].to_numpy()
        partition, position = keys["partition"].to_numpy(), keys["position"].to_numpy()
        order = np.lexsort((position, partition, lo, hi))
        hi, lo, partition = hi[order], lo[order], partition[order]
        # Sorted by (key, partition, position): a row repeats an earlier shard's pair when the row
        # before it has the same key and another partition (a repeat within its own shard is known).
        new = np.flatnonzero((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1]) & (partition[1:] != partition[:-1])) + 1
        rows_at = order[new]
        for index in np.unique(partition[new]).tolist():
            mine = rows_at[partition[new] == index]
            found.setdefault(index, []).append((keys["position"].to_numpy()[mine],
                                                keys["passed"].to_numpy(zero_copy_only=False)[mine],
                                                keys["output_tokens"].to_numpy()[mine]))
    repeats = {}
    for index, pieces_of in found.items():
        positions = np.concatenate([p[0] for p in pieces_of])
        order = np.argsort(positions)
        repeats[index] = _Repeats(positions=positions[order], passed=np.concatenate([p[1] for p in pieces_of])[order],
                                  output_tokens=np.concatenate([p[2] for p in pieces_of])[order])
    return repeats


def _keys_between(store: ArtifactStore, manifest: Manifest, ref: ShardRef, low: int, high: int) -> pa.Table:
    """The keys of one part with key_hi in [low, high): only the row groups that may hold some."""
    key = f"{store.key(manifest.uri).rsplit('/', 1)[0]}/{ref.path}"
    with store.open_read(key) as handle:
        parquet = pq.ParquetFile(handle)
        column = parquet.schema_arrow.get_field_index("key_hi")
        groups = []
        for group in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_min_max and (stats.max < low or stats.min >= high):
                continue
            groups.append(group)
        if not groups:
            return pa.table({}, schema=parquet.schema_arrow).cast(parquet.schema_arrow)
        table = parquet.read_row_groups(groups)
    hi = table["key_hi"]
    return table.filter(pc.and_(pc.greater_equal(hi, pa.scalar(low, pa.uint64())),
                                pc.less(hi, pa.scalar(min(high, (1 << 64) - 1), pa.uint64())))
                        if high < (1 << 64) else pc.greater_equal(hi, pa.scalar(low, pa.uint64())))


def _write_part(writer: StageWriter, partition_folder: str, table_name: str, table: pa.Table, index: int) -> ShardRef:
    """A part of a partition written again by the reduce, under replaced-shard-NNNNN/."""
    from bonito_tasks.contracts import TABLES

    schema = TABLES[table_name]
    data = parquet_bytes(table.select(schema.names).cast(schema))
    path = f"{REPLACED_PREFIX}{partition_folder}/part-{index:05d}.{table_name}.parquet"
    writer.store.write_bytes(f"{writer.prefix}/{path}", data)
    ref = ShardRef(table=table_name, path=path, rows=table.num_rows, sha256=sha256_hex(data), bytes=len(data))
    writer.shards.append(ref)
    return ref


def dataset_check(config: RunConfig, numbers: ValidateAggregate, row_result: dict[str, Any],
                  docs_dir: Path | None = None) -> SuiteRun:
    """The dataset suite over the run's numbers; with `docs_dir`, the run's Data Docs site there
    (the row suite's result, given, and the dataset suite's)."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = ephemeral_context(docs_dir)
    source = context.data_sources.add_pandas("bonito")
    row_suite = context.suites.add(build_examples_suite(config))
    frame, share_tasks = dataset_summary(numbers.rows, numbers.passed, numbers.repeats, numbers.labels)
    dataset_suite = context.suites.add(build_dataset_suite(config, share_tasks))
    dataset = run_suite(context, source, "dataset", dataset_suite, to_pandas(frame), name=_definition(dataset_suite))
    if docs_dir is not None:
        suite_id = ExpectationSuiteIdentifier(name=row_suite.name)
        stored = ExpectationSuiteValidationResultSchema().load(row_result)
        run_id = RunIdentifier(run_name=_definition(row_suite))
        stored.meta["run_id"] = run_id
        context.validation_results_store.store_validation_results(
            suite_validation_result=stored, expectation_suite_identifier=suite_id,
            suite_validation_result_identifier=ValidationResultIdentifier(
                expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=f"bonito-{ROWS_ASSET}"))
        context.build_data_docs()
        make_offline(docs_dir, [row_result, dataset.result])
    return dataset


def validate(
    store: ArtifactStore, run: RunRef, config: RunConfig, generated: list[Manifest], chunks: Manifest
) -> Manifest:
    """The whole stage in one process: a partition per generate shard, then the reduce."""
    from bonito_tasks.validate.shard import validate_shard

    partitions = [validate_shard(store, run, config, manifest, chunks, partition_of(manifest, i))
                  for i, manifest in enumerate(generated)]
    return combine_validated(store, run, config, partitions)


def combine_validated(store: ArtifactStore, run: RunRef, config: RunConfig, partitions: list[Manifest]) -> Manifest:
    return Validate(store, run, config, partitions).execute()


def partition_of(manifest: Manifest, default: int) -> int:
    """The partition a manifest is the manifest of (`.../shard-NNNNN/_manifest.json`), else `default`."""
    folder = manifest.uri.rsplit("/", 2)[-2]
    return int(folder[len(PARTITION_PREFIX):]) if folder.startswith(PARTITION_PREFIX) else default


def check_examples(
    examples: pa.Table, chunks: pa.Table, config: RunConfig, docs_dir: Path | None = None
) -> ExamplesCheck:
    """The check of a whole examples table in memory: the row suite on its profile, then the dataset
    suite on its numbers. `chunks` holds the run's (chunk_id, text). With `docs_dir`, GX Data Docs
    are built there."""
    profile = row_profile(examples, chunks, label_tasks(config), shape_tasks(config))
    context = ephemeral_context()
    source = context.data_sources.add_pandas("bonito")
    row_suite = context.suites.add(build_examples_suite(config))
    rows = run_suite(context, source, ROWS_ASSET, row_suite, to_pandas(profile), name=_definition(row_suite))
    failed_by_row = failed_rows(rows)
    dataset = None
    if not any(e["level"] == "contract" for e in rows.failed):
        passed = _passed(examples.num_rows, failed_by_row)
        numbers = run_numbers(profile, passed, failed_by_row, profile["output_tokens"].to_numpy(), label_tasks(config),
                              examples)
        dataset = dataset_check(config, numbers, portable_result(rows.result), docs_dir)
    return ExamplesCheck(rows=rows, dataset=dataset, failed_by_row=failed_by_row, profile=profile, docs_dir=docs_dir)


def _passed(n: int, failed_by_row: dict[int, list[str]]) -> np.ndarray:
    passed = np.ones(n, dtype=bool)
    passed[list(failed_by_row)] = False
    return passed


def _upload_dir(store: ArtifactStore, local: Path, prefix: str, index: str) -> str:
    """Copy a local folder to the store (which may be S3); returns the URI of `index` in it."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.write_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return store.uri(f"{prefix}/{index}")


def schema_errors(schema: pa.Schema) -> list[str]:
    errors = [f"missing column {f.name} ({f.type})" for f in EXAMPLES if f.name not in schema.names]
    errors += [
        f"column {f.name} is {schema.field(f.name).type}, expected {f.type}"
        for f in EXAMPLES
        if f.name in schema.names and not schema.field(f.name).type.equals(f.type)
    ]
    return errors


def _definition(suite) -> str:
    return f"{suite.name}-v{SUITE_VERSION}"


def failure_message(findings: CheckFindings) -> str:
    """What the on-call reads first: what failed, by how much against which threshold, and where to look."""
    where = f"{findings.dag_id} / {findings.run_id}"
    if findings.rows == 0:
        return (
            f"validate failed for {where}: no example rows to validate. "
            f"The {findings.generate_shards} generate shard(s) produced 0 examples "
            f"({findings.dropped_generations} generations dropped): nothing was generated, or every "
            "generation failed to parse. Check the generate logs and the dropped_generations tables."
        )
    if findings.schema_problems:
        problems = "; ".join(findings.schema_problems)
        return f"validate failed for {where}: the examples table breaks the contract: {problems}"
    failed = findings.failed
    lines = [
        f"validate failed for {where}: {len(failed)} expectation(s) of suite {findings.suite} "
        f"v{findings.suite_version} failed on {findings.rows} example rows; nothing was committed and publish "
        "will not run.",
        *(describe(f) for f in failed),
    ]
    if findings.quarantined:
        counts = ", ".join(f"{name}: {count}" for name, count in findings.quarantined.items())
        lines.append(f"Rows quarantined by expectation: {counts}")
    if findings.quarantine_uri:
        lines.append(f"Quarantined rows: {findings.quarantine_uri}")
    if findings.data_docs_uri:
        lines += [f"Data Docs: {findings.data_docs_uri}", f"Full GX result: {findings.result_uri}"]
    return "\n".join(lines)
