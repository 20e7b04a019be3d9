"""The stage harness: reuse -> begin -> write parts -> contract check -> commit.

Every stage runs through `run_stage`: it hands the stage's work a `StageWriter` for its Parquet
parts and commits what the work returns (a typed metrics object) with a manifest, written last.
A stage may run as several partitions (`partition=rank`, each committing its own manifest under
`shard-NNNNN/`), and `combine_partitions` makes one manifest of them, like datatrove's
`PipelineStep.run(data, rank, world_size)` with executor-owned completion markers.

A retry finds the manifest of an attempt that succeeded with the same config, inputs and code,
and returns it; otherwise the stage's folder is cleared and the work is redone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from bonito_tasks import __version__
from bonito_tasks.contracts import (
    FAILURE_NAME,
    MANIFEST_NAME,
    TABLES,
    CombinedMetrics,
    Manifest,
    RunRef,
    ShardRef,
    StageFailure,
    StageMetrics,
    sha256_hex,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.store import ArtifactStore, parquet_bytes, run_prefix

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PARTITION_PREFIX = "shard-"  # <stage>/shard-NNNNN/ holds one partition


@functools.cache
def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """The package version plus a hash of the library's source files: a code change makes every
    earlier manifest stale, so a retried stage redoes its work with the new code."""
    digest = sha256_hex(b"".join(
        path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes()
        for path in sorted(package_dir.rglob("*.py"))
    ))
    return f"{__version__}+{digest[:16]}"


class StageWriter:
    """The folder of one stage (or of one partition of it): its parts and its manifest."""

    def __init__(self, store: ArtifactStore, run: RunRef, stage: str, partition: int | None = None):
        self.store, self.run, self.stage = store, run, stage
        self.prefix = f"{run_prefix(run)}/{stage}"
        self.partition = partition
        if partition is not None:
            self.prefix += f"/{PARTITION_PREFIX}{partition:05d}"
        self.shards: list[ShardRef] = []

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_NAME}"

    @property
    def failure_key(self) -> str:
        return f"{self.prefix}/{FAILURE_NAME}"

    def failure(self) -> StageFailure | None:
        """Why the last attempt failed, if it failed and none has committed since."""
        if not self.store.exists(self.failure_key):
            return None
        return StageFailure.model_validate_json(self.store.read_bytes(self.failure_key))

    def record_failure(self, error: BaseException, partition: int | None = None) -> None:
        """Leave the cause of a failed attempt next to its parts (never raises: the error itself matters)."""
        import json

        details = getattr(error, "summary", None)
        try:
            failure = StageFailure(stage=self.stage, partition=partition, error=type(error).__name__,
                                   message=str(error)[:20_000], permanent=isinstance(error, PermanentFailure),
                                   details=json.loads(json.dumps(details, default=str)) if details else {})
            self.store.write_bytes(self.failure_key, failure.model_dump_json(indent=2).encode())
        except Exception as err:  # an unreachable store: the task fails with the original error
            log.warning("could not record the failure of %s: %s", self.prefix, err)

    def committed(self) -> Manifest | None:
        if not self.store.exists(self.manifest_key):
            return None
        return self.store.read_manifest(self.manifest_key)

    def reusable(self, config_sha256: str, inputs: list[Manifest] = ()) -> Manifest | None:
        """The committed manifest, if the same config, inputs and code produced it."""
        done = self.committed()
        if (done and done.config_sha256 == config_sha256 and done.code_version == code_version()
                and done.input_manifest_sha256 == [m.sha256 for m in inputs]):
            return done
        return None

    def begin(self) -> None:
        """Clear whatever an earlier attempt left (a stage's own files, not its partitions')."""
        if self.partition is not None:
            self.store.delete_prefix(self.prefix)
        else:
            for key in self.store.list(self.prefix):
                if not key[len(self.prefix) + 1:].startswith(PARTITION_PREFIX):
                    self.store.delete(key)
        self.shards = []

    def include(self, partition: Manifest) -> None:
        """List a committed partition's parts as this stage's own (paths relative to the stage folder)."""
        folder = self.store.key(partition.uri).rsplit("/", 1)[0]
        if not folder.startswith(f"{self.prefix}/{PARTITION_PREFIX}"):
            raise ValueError(f"{partition.uri} is not a partition of stage {self.prefix}")
        relative = folder[len(self.prefix) + 1:]
        self.shards += [ref.model_copy(update={"path": f"{relative}/{ref.path}"}) for ref in partition.shards]

    def add(self, table_name: str, table: pa.Table) -> ShardRef:
        """Write one Parquet part of `table_name`, cast to its contract schema."""
        schema = TABLES[table_name]
        data = parquet_bytes(table.select(schema.names).cast(schema))
        index = sum(1 for s in self.shards if s.table == table_name)
        path = f"part-{index:05d}.{table_name}.parquet"
        self.store.write_bytes(f"{self.prefix}/{path}", data)
        ref = ShardRef(table=table_name, path=path, rows=table.num_rows, sha256=sha256_hex(data), bytes=len(data))
        self.shards.append(ref)
        return ref

    def commit(self, *, config_sha256: str, metrics: StageMetrics, inputs: list[Manifest] = ()) -> Manifest:
        counts: dict[str, int] = {}
        for ref in self.shards:
            counts[ref.table] = counts.get(ref.table, 0) + ref.rows
        manifest = Manifest(
            stage=self.stage,
            dag_id=self.run.dag_id,
            run_id=self.run.run_id,
            uri=self.store.uri(self.manifest_key),
            shards=self.shards,
            counts=counts,
            metrics=metrics,
            input_manifest_sha256=[m.sha256 for m in inputs],
            config_sha256=config_sha256,
            code_version=code_version(),
        )
        self.store.write_bytes(self.manifest_key, manifest.to_json().encode())
        return manifest


def run_stage(
    store: ArtifactStore,
    run: RunRef,
    stage: str,
    *,
    config_sha256: str,
    inputs: list[Manifest],
    work: Callable[[StageWriter], StageMetrics],
    check: Callable[[StageWriter], None] | None = None,
    partition: int | None = None,
    resumable: bool = False,
) -> Manifest:
    """Run one stage (or one partition of it) exactly once.

    `work` writes the stage's parts with the writer and returns its metrics; `check` (a boundary
    contract) runs on the written parts before the commit and raises to stop it. A `resumable`
    stage clears its folder itself, keeping what an earlier attempt checkpointed."""
    writer = StageWriter(store, run, stage, partition)
    if done := writer.reusable(config_sha256, inputs):
        log.info("%s already committed at %s; reusing it", _name(stage, partition), done.uri)
        return done
    if not resumable:
        writer.begin()
    try:
        metrics = work(writer)
        if check is not None:
            check(writer)
    except Exception as error:  # the cause stays in the stage's folder for the run summary and the Dataset view
        writer.record_failure(error, partition)
        raise
    writer.store.delete(writer.failure_key)
    manifest = writer.commit(config_sha256=config_sha256, inputs=inputs, metrics=metrics)
    log.info("%s committed at %s", _name(stage, partition), manifest.uri)
    return manifest


def combine_partitions(
    store: ArtifactStore,
    run: RunRef,
    stage: str,
    partitions: list[Manifest],
    *,
    config_sha256: str,
    work: Callable[[StageWriter], StageMetrics] | None = None,
) -> Manifest:
    """One manifest over the committed partitions of a stage, in partition order: it lists every
    partition's parts, so readers see the stage as one. `work` may add parts of the stage's own
    (written at the stage's top level) and returns the combined metrics."""

    def combine(writer: StageWriter) -> StageMetrics:
        for manifest in partitions:
            writer.include(manifest)
        return work(writer) if work else CombinedMetrics(partitions=len(partitions))

    return run_stage(store, run, stage, config_sha256=config_sha256, inputs=partitions, work=combine)


def partition_view(manifest: Manifest, partition: int) -> Manifest:
    """The parts of one partition of a combined manifest, as a manifest readers can use. A stage
    that ran as one task is its own partition 0."""
    folder = f"{PARTITION_PREFIX}{partition:05d}/"
    if not any(ref.path.startswith(PARTITION_PREFIX) for ref in manifest.shards):
        if partition != 0:
            raise ValueError(f"{manifest.uri} has no partition {partition}")
        return manifest
    return manifest.model_copy(update={"shards": [ref for ref in manifest.shards if ref.path.startswith(folder)]})


def _name(stage: str, partition: int | None) -> str:
    return stage if partition is None else f"{stage} partition {partition}"
