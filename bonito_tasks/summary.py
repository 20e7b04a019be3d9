"""The run summary: what each stage of one run committed, read back from its manifests.

It reads the store, not XCom, so it also describes a run that failed half-way: a stage without a
manifest is reported as not committed. Written to `<run>/summary.json` and returned for the UI.
"""

from __future__ import annotations

import json
from typing import Any

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import Manifest, RunRef
from bonito_tasks.store import ArtifactStore, StageWriter, run_prefix

SUMMARY_FILE = "summary.json"


def run_summary(store: ArtifactStore, run: RunRef, config: RunConfig) -> dict[str, Any]:
    """Counts per stage, rejects, quarantined rows, generated tokens per second and GPU-hours.

    Tokens/s and GPU-hours cover the attempts that committed each generate shard (an attempt that
    died is not timed); GPU-hours are `tensor_parallel_size` GPUs x generate wall time, and are
    left out for the server backend, whose GPUs serve other clients too.
    """
    extract, chunk, validate, publish = (StageWriter(store, run, stage).committed()
                                         for stage in ("extract", "chunk", "validate", "publish"))
    summary: dict[str, Any] = {"dag_id": run.dag_id, "run_id": run.run_id}
    generate = _generate(store, run, config, chunk.counts.get("shards", 0)) if chunk else None
    summary["stages"] = {
        "extract": _state(extract), "chunk": _state(chunk),
        "generate": "{shards_committed}/{shards} shards committed".format(**generate) if generate else "not started",
        "validate": _state(validate), "publish": _state(publish),
    }
    if extract:
        summary["extract"] = {k: extract.counts.get(k, 0) for k in ("files", "documents", "skipped_known", "rejects")}
        summary["extract"]["rejects_by_reason"] = extract.metrics.get("rejects_by_reason", {})
    if chunk:
        summary["chunk"] = {k: chunk.counts.get(k, 0) for k in ("chunks", "shards", "duplicate_chunks", "short_chunks")}
        summary["generate"] = generate
    if validate:
        quality = validate.metrics.get("quality", {})
        summary["validate"] = {"examples_in": validate.counts.get("examples_in", 0),
                               "passed": validate.rows_of("examples"),
                               "quarantined": validate.rows_of("quarantine"),
                               "pass_rate": quality.get("pass_rate"),
                               "report_uri": quality.get("report_uri")}
    if publish:
        summary["publish"] = {k: publish.metrics[k] for k in ("examples", "examples_added", "dataset_uri", "hub_url")
                              if publish.metrics.get(k) is not None}
    store.write_bytes(f"{run_prefix(run)}/{SUMMARY_FILE}", json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def _state(manifest: Manifest | None) -> str:
    return "committed" if manifest else "not committed"


def _generate(store: ArtifactStore, run: RunRef, config: RunConfig, shards: int) -> dict[str, Any]:
    manifests = [m for i in range(shards) if (m := StageWriter(store, run, "generate", shard=i).committed())]
    wall_s = sum(m.metrics.get("attempt_wall_s", 0) for m in manifests)
    attempt_tokens = sum((m.metrics.get("attempt_output_tokens_per_s") or 0) * m.metrics.get("attempt_wall_s", 0)
                         for m in manifests)
    return {
        "shards": shards,
        "shards_committed": len(manifests),
        "prompts": sum(m.metrics.get("prompts", 0) for m in manifests),
        "examples": sum(m.rows_of("examples") for m in manifests),
        "dropped_generations": sum(m.rows_of("dropped_generations") for m in manifests),
        "generated_tokens": sum(m.metrics.get("generated_tokens", 0) for m in manifests),
        "wall_s": round(wall_s, 1),
        "output_tokens_per_s": round(attempt_tokens / wall_s, 1) if wall_s else None,
        "gpu_hours": round(wall_s * config.tensor_parallel_size / 3600, 4) if config.backend == "vllm" else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few aligned lines for the task log."""
    lines = [f"run summary {summary['dag_id']} / {summary['run_id']}"]
    lines += [f"  {stage:<9} {state}" for stage, state in summary["stages"].items()]
    for stage in ("extract", "chunk", "generate", "validate", "publish"):
        if stage in summary:
            values = ", ".join(f"{k}={v}" for k, v in summary[stage].items() if not isinstance(v, dict))
            lines.append(f"  {stage}: {values}")
    return "\n".join(lines)
