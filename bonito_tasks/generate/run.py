"""Generate stage: one shard of chunks x task types -> Bonito examples, parse failures counted."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES, PARSE_FAILURES, Manifest, RunRef, canonical_json, sha256_hex
from bonito_tasks.generate.engine import VllmEngine, model_revision
from bonito_tasks.generate.parse import ParseFailure, parse_generation
from bonito_tasks.generate.prompt import build_prompt
from bonito_tasks.store import ArtifactStore, StageWriter

log = logging.getLogger(__name__)


def generate_shard(
    store: ArtifactStore,
    run: RunRef,
    config: RunConfig,
    chunks: Manifest,
    shard: int,
    engine: VllmEngine | None = None,
) -> Manifest:
    """Generate examples for one chunk shard. Pass a loaded `engine` to share it across calls;
    without one, an engine is started for this shard and shut down before returning."""
    writer = StageWriter(store, run, "generate", shard=shard)
    if done := writer.reusable(config.sha256(), [chunks]):
        log.info("generate shard %d already committed at %s; reusing it", shard, done.uri)
        return done
    writer.begin()
    table = store.read_shard(chunks, "chunks", shard)
    rows = table.to_pylist()
    jobs = [(row, task_type) for row in rows for task_type in config.task_types]
    prompts = [build_prompt(row["text"], task_type) for row, task_type in jobs]
    log.info("generate shard %d: %d chunks x %d task types = %d prompts, n=%d",
             shard, len(rows), len(config.task_types), len(prompts), config.n)

    started = time.monotonic()
    if engine is None:
        with VllmEngine(config) as own_engine:
            completions = own_engine.generate(prompts, config.sampling_params())
    else:
        completions = engine.generate(prompts, config.sampling_params())
    wall_s = time.monotonic() - started

    sampling = canonical_json(config.sampling_params())
    revision = model_revision(config)
    examples, failures, seen = [], [], set()
    failure_reasons: Counter[str] = Counter()
    duplicates = generated_tokens = 0
    for (row, task_type), outs in zip(jobs, completions):
        for sample_index, out in enumerate(outs):
            generated_tokens += out.n_tokens
            try:
                parsed = parse_generation(out.text, row["text"])
            except ParseFailure as failure:
                failure_reasons[failure.reason] += 1
                failures.append({"chunk_id": row["chunk_id"], "task_type": task_type, "sample_index": sample_index,
                                 "reason": failure.reason, "generated_text": out.text})
                continue
            key = (row["chunk_id"], parsed.input, parsed.output)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            examples.append({
                "example_id": sha256_hex(f"{run.run_id}:{row['chunk_id']}:{task_type}:{sample_index}"),
                "task_type": task_type,
                "input": parsed.input,
                "output": parsed.output,
                "doc_id": row["doc_id"],
                "chunk_id": row["chunk_id"],
                "char_start": row["char_start"],
                "char_end": row["char_end"],
                "sample_index": sample_index,
                "model_id": config.model_id,
                "model_revision": revision,
                "sampling_params": sampling,
                "run_id": run.run_id,
            })
    writer.add("examples", pa.Table.from_pylist(examples, EXAMPLES))
    writer.add("parse_failures", pa.Table.from_pylist(failures, PARSE_FAILURES))
    metrics = {
        "prompts": len(prompts),
        "generations": len(prompts) * config.n,
        "generated_tokens": generated_tokens,
        "wall_s": round(wall_s, 3),
        "output_tokens_per_s": round(generated_tokens / wall_s, 1) if wall_s else None,
        "parse_failures": dict(failure_reasons),
        "duplicates_dropped": duplicates,
    }
    log.info("generate shard %d: %s", shard, metrics)
    return writer.commit(config_sha256=config.sha256(), inputs=[chunks], counts={"duplicates": duplicates},
                         metrics=metrics)
