"""The stage harness: a stage is a class; the base owns reuse, timing, failures and the commit.

A `Stage` subclass declares its name, the stages it reads and its slice of the run config, and
does its work in `work(writer)`: it writes Parquet parts with a `StageWriter` and returns typed
metrics. `Stage.execute()` commits them with a manifest, written last. A stage may run as several
partitions (`partition=rank`, each committing its own manifest under `shard-NNNNN/`), and a
`CombineStage` makes one manifest of them, like datatrove's `PipelineStep.run(data, rank,
world_size)` with executor-owned completion markers.

The reuse key covers exactly what the stage reads: its config slice (reading any other field
raises), its code (its module and the library modules it imports), the content fingerprints of
its inputs, and `key_extra()`. A retry finds the manifest of an attempt with the same key and
returns it; otherwise the stage's folder is cleared and the work is redone. So a fix in the card
code or a new `license` keeps generate's GPU work; a new temperature or prompt template does not.
"""

from __future__ import annotations

import ast
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from bonito_tasks import __version__
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    FAILURE_NAME,
    MANIFEST_NAME,
    TABLES,
    CheckFindings,
    CombinedMetrics,
    Manifest,
    RunRef,
    ShardRef,
    StageFailure,
    StageMetrics,
    StageName,
    canonical_json,
    sha256_hex,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.store import ArtifactStore, parquet_bytes, run_prefix

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PARTITION_PREFIX = "shard-"  # <stage>/shard-NNNNN/ holds one partition


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
        findings = getattr(error, "findings", None)
        try:
            failure = StageFailure(stage=self.stage, partition=partition, error=type(error).__name__,
                                   message=str(error)[:20_000], permanent=isinstance(error, PermanentFailure),
                                   details=findings if isinstance(findings, CheckFindings) else CheckFindings())
            self.store.write_bytes(self.failure_key, failure.model_dump_json(indent=2).encode())
        except Exception as err:  # an unreachable store: the task fails with the original error
            log.warning("could not record the failure of %s: %s", self.prefix, err)

    def committed(self) -> Manifest | None:
        if not self.store.exists(self.manifest_key):
            return None
        return self.store.read_manifest(self.manifest_key)

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

    def buffer(self, table_name: str, schema: pa.Schema, *, max_bytes: int | None = None,
               max_rows: int | None = None) -> PartBuffer:
        """Rows of `table_name` collected in memory and written as a part once they reach
        `max_bytes` (as the caller measures them) or `max_rows`."""
        return PartBuffer(self, table_name, schema, max_bytes, max_rows)

    def commit(self, metrics: StageMetrics, key: ReuseKey | None = None) -> Manifest:
        """Write the manifest (last: it is the commit marker). `key` records what the stage read."""
        counts: dict[str, int] = {}
        for ref in self.shards:
            counts[ref.table] = counts.get(ref.table, 0) + ref.rows
        key = key or ReuseKey(reads=[], inputs=[], config_sha256="", code_version="")
        manifest = Manifest(
            stage=self.stage,
            dag_id=self.run.dag_id,
            run_id=self.run.run_id,
            uri=self.store.uri(self.manifest_key),
            shards=self.shards,
            counts=counts,
            metrics=metrics,
            reads=key.reads,
            input_manifest_sha256=key.inputs,
            config_sha256=key.config_sha256,
            code_version=key.code_version,
            reuse_key=key.sha256 if key.code_version else "",
        )
        self.store.write_bytes(self.manifest_key, manifest.to_json().encode())
        return manifest


class PartBuffer:
    """Rows for one table of a stage, written as a part whenever the buffer is full (and by `flush`)."""

    def __init__(self, writer: StageWriter, table_name: str, schema: pa.Schema, max_bytes: int | None,
                 max_rows: int | None):
        self.writer, self.table_name, self.schema = writer, table_name, schema
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0

    def append(self, row: dict[str, Any], size: int = 0) -> None:
        self.rows.append(row)
        self.bytes += size
        if ((self.max_bytes is not None and self.bytes >= self.max_bytes)
                or (self.max_rows is not None and len(self.rows) >= self.max_rows)):
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.add(self.table_name, pa.Table.from_pylist(self.rows, self.schema))
        self.rows, self.bytes = [], 0


class UndeclaredConfig(Exception):
    """A stage read a config field outside its declared slice: its reuse key would miss it (a bug)."""


class _ConfigSlice:
    """The run config as one stage sees it: only the fields it declares; reading another raises, so
    the reuse key can never miss a setting the stage depends on."""

    # Methods of RunConfig a stage may call, with the fields they read.
    METHODS: ClassVar[dict[str, frozenset[str]]] = {
        "sampling_params": frozenset({"max_tokens", "temperature", "top_p", "n"}),
    }

    def __init__(self, config: RunConfig, fields: frozenset[str], stage: str):
        self._config, self._fields, self._stage = config, fields, stage

    def __getattr__(self, name: str) -> Any:
        if name in self._fields or self.METHODS.get(name, {name}) <= self._fields:
            return getattr(self._config, name)
        raise UndeclaredConfig(f"stage {self._stage} reads config.{name}, which its config_fields do not declare")


class ReuseKey(BaseModel):
    """Exactly what a stage's output depends on: what it reads and how it works."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reads: list[str]  # the stages it reads, as declared
    inputs: list[str]  # content fingerprints of the manifests it read, in order
    config_sha256: str  # its slice of the run config
    code_version: str  # its code and the library modules it imports
    extra: dict[str, Any] = Field(default_factory=dict)  # e.g. generate's resolved model revision

    @property
    def sha256(self) -> str:
        return sha256_hex(canonical_json(self.model_dump()))


class Stage(ABC):
    """One stage of a run, or one partition of a partitioned stage.

    A subclass declares its `name`, the stages it `reads`, the `config_fields` it depends on, and
    does its work in `work(writer)`, writing parts and returning its metrics. The base runs it
    exactly once (`execute()`): a committed manifest with the same reuse key is returned as it is;
    otherwise the folder is cleared, the work is timed, a boundary `check` runs on the parts, and
    the manifest is written last. A failure leaves its cause in the folder and is re-raised.
    """

    name: ClassVar[StageName]
    reads: ClassVar[tuple[StageName, ...]] = ()
    config_fields: ClassVar[frozenset[str]] = frozenset()
    # Settings the stage may read that do not change what it writes (engine tuning): not in its key,
    # so lowering gpu_memory_utilization after an out-of-memory failure keeps the checkpoints.
    untracked_fields: ClassVar[frozenset[str]] = frozenset()
    resumable: ClassVar[bool] = False  # the stage clears its folder itself, keeping its checkpoints

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, inputs: Sequence[Manifest] = (),
                 *, partition: int | None = None):
        undeclared = {m.stage for m in inputs} - set(self.reads)
        if undeclared:
            raise ValueError(f"stage {self.name} reads {sorted(undeclared)}, which it does not declare")
        self.store, self.run, self.partition = store, run, partition
        self.config: RunConfig = cast(RunConfig, _ConfigSlice(config, self.config_fields | self.untracked_fields,
                                                              self.name))
        self._config_sha256 = sha256_hex(canonical_json({f: getattr(config, f) for f in sorted(self.config_fields)}))
        self.inputs = list(inputs)
        self.writer = StageWriter(store, run, self.name, partition)

    @abstractmethod
    def work(self, writer: StageWriter) -> StageMetrics:
        """Write the stage's parts with `writer`; return its metrics."""

    def check(self, writer: StageWriter) -> None:  # noqa: B027 (optional: most stages have none)
        """A boundary contract on the written parts, before the commit: raise to stop it."""

    def key_extra(self) -> dict[str, Any]:
        """What else the output depends on (beyond config slice, code and inputs)."""
        return {}

    @functools.cached_property
    def reuse_key(self) -> ReuseKey:
        return ReuseKey(reads=list(self.reads), inputs=[m.content_sha256 for m in self.inputs],
                        config_sha256=self._config_sha256, code_version=code_version(type(self).__module__),
                        extra=self.key_extra())

    @property
    def label(self) -> str:
        return self.name if self.partition is None else f"{self.name} partition {self.partition}"

    def reusable(self) -> Manifest | None:
        """The committed manifest, if an attempt with the same reuse key wrote it."""
        done = self.writer.committed()
        return done if done and done.reuse_key == self.reuse_key.sha256 else None

    def execute(self) -> Manifest:
        """Run the stage exactly once: reuse what is committed, else do the work and commit it."""
        writer = self.writer
        if done := self.reusable():
            log.info("%s already committed at %s; reusing it", self.label, done.uri)
            return done
        if not self.resumable:
            writer.begin()
        started = time.monotonic()
        try:
            metrics = self.work(writer)
            self.check(writer)
        except Exception as error:  # the cause stays in the stage's folder for the run summary and the Dataset view
            writer.record_failure(error, self.partition)
            raise
        if "wall_s" in type(metrics).model_fields and not metrics.model_dump(include={"wall_s"})["wall_s"]:
            metrics = metrics.model_copy(update={"wall_s": round(time.monotonic() - started, 3)})
        writer.store.delete(writer.failure_key)
        manifest = writer.commit(metrics, self.reuse_key)
        log.info("%s committed at %s in %.1f s", self.label, manifest.uri, time.monotonic() - started)
        return manifest

    def committed_input(self, stage: StageName) -> Manifest | None:
        """This run's committed manifest of a stage this one declares it reads (for stages whose
        manifest does not travel through XCom)."""
        if stage not in self.reads:
            raise ValueError(f"stage {self.name} does not declare that it reads {stage}")
        return StageWriter(self.store, self.run, stage).committed()


class CombineStage(Stage):
    """A stage's own manifest over its committed partitions (its inputs, in partition order): it
    lists every partition's parts, so readers see the stage as one. `work` may add parts of its
    own and returns the combined metrics."""

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, partitions: Sequence[Manifest]):
        super().__init__(store, run, config, partitions)

    def work(self, writer: StageWriter) -> StageMetrics:
        for manifest in self.inputs:
            writer.include(manifest)
        return self.combine(writer)

    def combine(self, writer: StageWriter) -> StageMetrics:
        return CombinedMetrics(partitions=len(self.inputs))


# ---- The code a stage runs: its module and every library module it imports (transitively,
# imports inside functions included). The run config's module is left out: a stage's slice of the
# config enters its key as values.
LIBRARY = "bonito_tasks"
NOT_CODE = frozenset({f"{LIBRARY}.config"})


@functools.cache
def code_version(module: str) -> str:
    """The package version plus a hash of the source of `module` and of the library modules it
    imports: a change there makes the stage's earlier manifests stale; a change elsewhere does not."""
    files = sorted(_import_closure(module))
    digest = sha256_hex(b"".join(
        path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() for path in files))
    return f"{__version__}+{digest[:16]}"


def code_modules(module: str) -> list[str]:
    """The library modules whose source is in `module`'s code version (for the docs and tests)."""
    return sorted(_module_name(path) for path in _import_closure(module))


def _import_closure(module: str) -> set[Path]:
    """`module`, every module of its stage's package (`bonito_tasks.<stage>`), and what they import."""
    seen: set[Path] = set()
    package = ".".join(module.split(".")[:2])
    folder = PACKAGE_DIR.joinpath(*package.split(".")[1:])
    todo = [module] + ([_module_name(path) for path in folder.glob("*.py")] if folder.is_dir() else [])
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if path is None or path in seen or name in NOT_CODE:
            continue
        seen.add(path)
        todo += _imports(path, name)
    return seen


def _module_path(name: str) -> Path | None:
    if name != LIBRARY and not name.startswith(LIBRARY + "."):
        return None
    base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join((LIBRARY, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports(path: Path, name: str) -> list[str]:
    """The library modules `path` imports, with the packages Python runs on the way."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]  # submodules (others resolve to nothing)
    parents = [".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)]
    return found + parents


def partition_view(manifest: Manifest, partition: int) -> Manifest:
    """The parts of one partition of a combined manifest, as a manifest readers can use. A stage
    that ran as one task is its own partition 0."""
    folder = f"{PARTITION_PREFIX}{partition:05d}/"
    if not any(ref.path.startswith(PARTITION_PREFIX) for ref in manifest.shards):
        if partition != 0:
            raise ValueError(f"{manifest.uri} has no partition {partition}")
        return manifest
    return manifest.model_copy(update={"shards": [ref for ref in manifest.shards if ref.path.startswith(folder)]})

