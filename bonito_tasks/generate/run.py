"""Generate stage: one shard of chunks x task types -> Bonito examples, checkpointed as it goes.

Completed prompts are written in checkpoints (Parquet parts plus a `_checkpoint-NNNNN.json`
marker, written last) while the engine keeps running. A retry after a crash keeps the
checkpoints and generates only the prompts they lack; the shard's manifest then lists every
part, so each (chunk_id, task_type, sample_index) is in `examples` or `dropped_generations`
exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    DROPPED_GENERATIONS,
    EXAMPLES,
    CheckpointMarker,
    GenerateMetrics,
    Manifest,
    RunRef,
    StageName,
    canonical_json,
    generate_shard_parts,
    sha256_hex,
)
from bonito_tasks.format import build_prompt
from bonito_tasks.generate.engine import (
    DEFAULT_MAX_NUM_SEQS,
    Completion,
    Engine,
    EngineFailure,
    VllmEngine,
    model_revision,
)
from bonito_tasks.generate.parse import ParseFailure, parse_generation
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "_checkpoint-"
ENGINE_FAILURES = "_engine_failures.json"
PROGRESS_EVERY_S = 30


@dataclass
class ShardState:
    """What the shard has committed so far, across attempts."""

    done: set[int] = field(default_factory=set)  # prompt indexes in checkpoints
    seen: set[tuple[str, str, str]] = field(default_factory=set)  # (chunk_id, input, output)
    counts: Counter = field(default_factory=Counter)  # examples, drop reasons, generated_tokens
    checkpoints: int = 0


class GenerateShard(Stage):
    """Generate examples for one generate shard of the chunk stage (a run of its parts, read one
    at a time). Pass a loaded `engine` (in-process or server) to share it across calls; without
    one, a vLLM engine is started when the shard has work left and shut down before returning."""

    name = StageName.GENERATE
    reads = (StageName.CHUNK,)
    # What is generated: the prompts (task types), the model and the sampling.
    config_fields = frozenset({"task_types", "n", "model_id", "model_revision", "max_model_len", "dtype",
                               "quantization", "seed", "max_tokens", "temperature", "top_p"})
    untracked_fields = frozenset({"backend", "served_model_name", "server_concurrency", "tensor_parallel_size",
                                  "gpu_memory_utilization", "max_num_seqs", "checkpoint_prompts"})
    resumable = True

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, chunks: Manifest, shard: int,
                 engine: Engine | None = None):
        super().__init__(store, run, config, [chunks], partition=shard)
        self.chunks, self.shard, self.engine = chunks, shard, engine

    def key_extra(self) -> dict[str, Any]:
        # The prompt template and parser are code (format.py, parse.py); a local model folder is keyed by content.
        return {"shard": self.shard, "model_revision": model_revision(self.config)}

    def work(self, writer: StageWriter) -> GenerateMetrics:
        config, store, chunks, shard = self.config, self.store, self.chunks, self.shard
        key = self.reuse_key.sha256
        failures = _engine_failures(writer)  # before _resume, which may clear the folder
        state = _resume(writer, key)
        resumed = len(state.done)
        parts = generate_shard_parts(chunks, shard)
        refs = chunks.shards_of("chunks")
        n_chunks = sum(refs[p].rows for p in parts)
        # A chunk carries the task types its document still needs (null: all of the run's; the
        # ledger has the rest), so the prompts are counted from that column alone.
        n_prompts = sum(len(types or config.task_types) for p in parts for types in store.read_shard(
            chunks, "chunks", p, columns=["pending_task_types"])["pending_task_types"].to_pylist())
        log.info("generate shard %d: %d chunks (%d part(s)) x %d task types = %d prompts (n=%d); %d done in %d "
                 "checkpoint(s)", shard, n_chunks, len(parts), len(config.task_types), n_prompts, config.n,
                 len(state.done), state.checkpoints)

        started = time.monotonic()
        attempt_tokens = 0
        engine_start_s = 0.0
        own_engine = None
        engine = self.engine
        progress = _Progress(shard, n_prompts, len(state.done))
        try:
            offset = 0  # prompt index of the window's first job: prompts are numbered across the shard
            for part in parts:  # one window of chunks in memory at a time
                rows = store.read_shard(chunks, "chunks", part).to_pylist()
                jobs = {offset + i: job for i, job in enumerate(
                    (r, t) for r in rows for t in r["pending_task_types"] or config.task_types)}
                offset += len(jobs)
                pending = {i: build_prompt(row["text"], t) for i, (row, t) in jobs.items() if i not in state.done}
                if not pending:
                    continue
                if engine is None:
                    loading = time.monotonic()
                    engine = own_engine = VllmEngine(config, max_num_seqs=_backed_off_max_num_seqs(config, failures))
                    own_engine.load()
                    engine_start_s = time.monotonic() - loading
                    log.info("generate shard %d: engine started in %.1f s", shard, engine_start_s)
                    progress.restart()
                recorder = _Recorder(writer, self.run, config, key, jobs, state)
                too_long = _too_long(engine, config, pending)
                if too_long:
                    recorder.commit({i: None for i in too_long})
                    for i in too_long:
                        del pending[i]
                for batch in engine.stream(pending, config.sampling_params(), flush_every=config.checkpoint_prompts):
                    attempt_tokens += recorder.commit(dict(batch))
                    progress.update(len(state.done), attempt_tokens)
        except EngineFailure as failure:
            store.write_bytes(f"{writer.prefix}/{ENGINE_FAILURES}",
                              json.dumps(failures + [{"error": str(failure), "kind": failure.kind}]).encode())
            raise
        finally:
            if own_engine is not None:
                own_engine.unload()
        wall_s = time.monotonic() - started
        generate_s = wall_s - engine_start_s

        counts = state.counts
        metrics = GenerateMetrics(
            prompts=n_prompts,
            generations=n_prompts * config.n,
            resumed_prompts=resumed,
            generated_tokens=counts["generated_tokens"],
            attempt_wall_s=round(wall_s, 3),
            engine_start_s=round(engine_start_s, 3),
            generate_s=round(generate_s, 3),
            output_tokens_per_s=round(attempt_tokens / generate_s, 1) if generate_s > 0 and attempt_tokens else None,
            parse_failures={r: counts[r] for r in ("no_pipe", "extra_pipe") if counts[r]},
            duplicates_dropped=counts["duplicate"],
            prompts_too_long=counts["prompt_too_long"] // config.n,
            checkpoints=state.checkpoints,
        )
        log.info("generate shard %d: %s", shard, metrics.model_dump_json())
        return metrics


def generate_shard(
    store: ArtifactStore, run: RunRef, config: RunConfig, chunks: Manifest, shard: int, engine: Engine | None = None
) -> Manifest:
    return GenerateShard(store, run, config, chunks, shard, engine).execute()


def _resume(writer: StageWriter, key: str) -> ShardState:
    """Reload the checkpoints of an earlier attempt with the same reuse key; otherwise (or when
    there are none) start the shard from an empty folder."""
    store = writer.store
    keys = store.list(writer.prefix)
    markers = [CheckpointMarker.model_validate_json(store.read_bytes(k)) for k in keys
               if k.rsplit("/", 1)[-1].startswith(CHECKPOINT_PREFIX)]
    state = ShardState()
    if not markers or any(m.reuse_key != key for m in markers):
        writer.begin()
        return state
    writer.shards = [ref for m in markers for ref in m.shards]
    kept = {f"{writer.prefix}/{ref.path}" for ref in writer.shards}
    for key in keys:  # parts a dead attempt wrote after its last checkpoint
        if key not in kept and not key.rsplit("/", 1)[-1].startswith("_"):
            store.delete(key)
    for marker in markers:
        state.done.update(marker.prompts)
        state.counts.update(marker.counts)
    for ref in writer.shards:
        if ref.table == "examples":
            part = store.read_part(writer.prefix, ref, columns=["chunk_id", "input", "output"])
            state.seen.update(zip(*(part[c].to_pylist() for c in ("chunk_id", "input", "output"))))
    state.checkpoints = len(markers)
    log.info("resuming from %d checkpoint(s): %d prompts already generated", len(markers), len(state.done))
    return state


class _Recorder:
    """Turns finished prompts into rows and commits them as one checkpoint."""

    def __init__(self, writer: StageWriter, run: RunRef, config: RunConfig, key: str,
                 jobs: dict[int, tuple[dict, str]], state: ShardState):
        self.writer, self.run, self.config, self.key, self.jobs, self.state = writer, run, config, key, jobs, state
        self.sampling = canonical_json(config.sampling_params())
        self.revision = model_revision(config)

    def commit(self, finished: dict[int, list[Completion] | None]) -> int:
        """Write one checkpoint for these prompts (None: prompt too long). Returns tokens generated."""
        examples: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for index, completions in sorted(finished.items()):
            row, task_type = self.jobs[index]
            for sample_index in range(self.config.n):
                reason, text = self._record(row, task_type, sample_index, completions, examples, counts)
                if reason:
                    counts[reason] += 1
                    dropped.append({"chunk_id": row["chunk_id"], "task_type": task_type,
                                    "sample_index": sample_index, "reason": reason, "generated_text": text})
        counts["examples"] = len(examples)
        before = len(self.writer.shards)
        if examples:
            self.writer.add("examples", pa.Table.from_pylist(examples, EXAMPLES))
        if dropped:
            self.writer.add("dropped_generations", pa.Table.from_pylist(dropped, DROPPED_GENERATIONS))
        marker = CheckpointMarker(reuse_key=self.key, prompts=sorted(finished),
                                  shards=self.writer.shards[before:], counts=dict(counts))
        name = f"{CHECKPOINT_PREFIX}{self.state.checkpoints:05d}.json"
        self.writer.store.write_bytes(f"{self.writer.prefix}/{name}", marker.model_dump_json().encode())
        self.state.checkpoints += 1
        self.state.done.update(finished)
        self.state.counts.update(counts)
        return counts["generated_tokens"]

    def _record(self, row, task_type, sample_index, completions, examples, counts) -> tuple[str | None, str]:
        """Append the example for one generation, or return why it was dropped and its text."""
        if completions is None:
            return "prompt_too_long", ""
        out = completions[sample_index]
        counts["generated_tokens"] += out.n_tokens
        try:
            parsed = parse_generation(out.text, row["text"])
        except ParseFailure as failure:
            return failure.reason, out.text
        key = (row["chunk_id"], parsed.input, parsed.output)
        if key in self.state.seen:
            return "duplicate", out.text
        self.state.seen.add(key)
        examples.append({
            "example_id": sha256_hex(f"{self.run.run_id}:{row['chunk_id']}:{task_type}:{sample_index}"),
            "task_type": task_type,
            "input": parsed.input,
            "output": parsed.output,
            "doc_id": row["doc_id"],
            "chunk_id": row["chunk_id"],
            "char_start": row["char_start"],
            "char_end": row["char_end"],
            "sample_index": sample_index,
            "model_id": self.config.model_id,
            "model_revision": self.revision,
            "sampling_params": self.sampling,
            "run_id": self.run.run_id,
        })
        return None, ""


def _too_long(engine: Engine, config: RunConfig, prompts: dict[int, str]) -> list[int]:
    """Prompts that leave no room for max_tokens within max_model_len (rejected, never sent)."""
    limit = config.max_model_len - config.max_tokens
    indexes = list(prompts)
    lengths = engine.prompt_tokens([prompts[i] for i in indexes])
    return [i for i, n in zip(indexes, lengths) if n > limit]


def _engine_failures(writer: StageWriter) -> list[dict]:
    key = f"{writer.prefix}/{ENGINE_FAILURES}"
    return json.loads(writer.store.read_bytes(key)) if writer.store.exists(key) else []


def _backed_off_max_num_seqs(config: RunConfig, failures: list[dict]) -> int | None:
    """Halve the batch size for every out-of-memory failure an earlier attempt recorded."""
    ooms = sum(1 for f in failures if f["kind"] == "out_of_memory")
    if not ooms:
        return config.max_num_seqs
    base = config.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    backed_off = max(1, base >> ooms)
    log.warning("%d earlier attempt(s) ran out of memory: max_num_seqs %d -> %d", ooms, base, backed_off)
    return backed_off


class _Progress:
    """Logs a progress line every 10% of the shard or every 30 s, whichever comes first."""

    def __init__(self, shard: int, total: int, done: int):
        self.shard, self.total = shard, total
        self.started = self.last_time = time.monotonic()
        self.last_done = done

    def restart(self) -> None:
        """Time from now (the engine has just started)."""
        self.started = self.last_time = time.monotonic()

    def update(self, done: int, tokens: int) -> None:
        now = time.monotonic()
        if done - self.last_done < self.total / 10 and now - self.last_time < PROGRESS_EVERY_S and done < self.total:
            return
        elapsed = now - self.started
        log.info("generate shard %d: %d/%d prompts (%.0f%%), %.0f output tok/s",
                 self.shard, done, self.total, 100 * done / self.total, tokens / elapsed if elapsed else 0)
        self.last_done, self.last_time = done, now
