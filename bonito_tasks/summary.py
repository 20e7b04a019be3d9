"""The run summary: what each stage of one run committed, read back from its manifests.

It reads the store, not XCom, so it also describes a run that failed half-way: a stage without a
manifest is reported as not committed. Written to `<run>/summary.json` (when the store cannot be
written, a warning names the error and the summary is still returned) and returned for the UI.
"""

from __future__ import annotations

import logging
from collections import Counter

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    ChunkMetrics,
    ExtractMetrics,
    GenerateMetrics,
    GenerateSummary,
    Manifest,
    PublishMetrics,
    RunRef,
    RunSummary,
    StageName,
    ValidateMetrics,
)
from bonito_tasks.failures import failure_cause, format_cause
from bonito_tasks.figures import record_figures
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import ArtifactStore, run_prefix

SUMMARY_FILE = "summary.json"

log = logging.getLogger(__name__)


def run_summary(store: ArtifactStore, run: RunRef, config: RunConfig, *, write: bool = True) -> RunSummary:
    """Counts per stage, rejects, quarantined rows, generated tokens per second and GPU-hours.

    Tokens/s and GPU-hours cover the attempts that committed each generate shard (an attempt that
    died is not timed); GPU-hours are `tensor_parallel_size` GPUs x generate wall time, and are
    left out for the server backend, whose GPUs serve other clients too.
    """
    extract, chunk, validate, publish = (StageWriter(store, run, stage).committed() for stage in (
        StageName.EXTRACT, StageName.CHUNK, StageName.VALIDATE, StageName.PUBLISH))
    planned = chunk.metrics_as(ChunkMetrics).shards if chunk else 0
    shards = _generate_manifests(store, run, planned) if chunk else []
    generate = _generate(config, planned, shards) if chunk else None
    summary = RunSummary(
        dag_id=run.dag_id,
        run_id=run.run_id,
        run_folder=store.uri(run_prefix(run)),
        stages={
            StageName.EXTRACT: _state(extract),
            StageName.CHUNK: _state(chunk),
            StageName.GENERATE: (f"{generate.shards_committed}/{generate.shards} shards committed"
                                 if generate else "not started"),
            StageName.VALIDATE: _state(validate),
            StageName.COMPARE: _state(StageWriter(store, run, StageName.COMPARE).committed()),
            StageName.PUBLISH: _state(publish),
        },
        extracted=extract.metrics_as(ExtractMetrics) if extract else None,
        chunked=chunk.metrics_as(ChunkMetrics) if chunk else None,
        generated=generate,
        validated=validate.metrics_as(ValidateMetrics) if validate else None,
        published=publish.metrics_as(PublishMetrics) if publish else None,
    )
    try:
        cause = failure_cause(store, run)
    except Exception as err:  # an unreadable store must not hide the rest of the summary
        log.warning("could not read the failure records of %s: %s: %s", run.run_id, type(err).__name__, err)
        cause = None
    if cause:  # the failed stage names its cause
        summary.failed_stage, summary.cause = cause.stage, cause
        summary.stages[cause.stage] = f"failed ({cause.error})"
    key = f"{run_prefix(run)}/{SUMMARY_FILE}"
    if not write:  # a reader's view (the Dataset view): the store is left as it is
        return summary
    try:
        store.write_bytes(key, summary.model_dump_json(indent=2).encode())
        if generate and generate.shards_committed == generate.shards:  # for sizing the next run's shards
            record_figures(store, run, config, [m.metrics_as(GenerateMetrics) for m in shards])
    except Exception as err:  # an unwritable store must not hide the summary: it is still logged and returned
        log.warning("could not write the run summary to %s: %s: %s", store.uri(key), type(err).__name__, err)
    return summary


def _state(manifest: Manifest | None) -> str:
    return "committed" if manifest else "not committed"


def _generate_manifests(store: ArtifactStore, run: RunRef, shards: int) -> list[Manifest]:
    return [m for i in range(shards) if (m := StageWriter(store, run, StageName.GENERATE, partition=i).committed())]


def _generate(config: RunConfig, shards: int, manifests: list[Manifest]) -> GenerateSummary:
    metrics = [m.metrics_as(GenerateMetrics) for m in manifests]
    wall_s = sum(m.attempt_wall_s for m in metrics)
    generate_s = sum(m.generate_s for m in metrics)
    attempt_tokens = sum((m.output_tokens_per_s or 0) * m.generate_s for m in metrics)
    return GenerateSummary(
        shards=shards,
        shards_committed=len(manifests),
        prompts=sum(m.prompts for m in metrics),
        examples=sum(m.rows_of("examples") for m in manifests),
        dropped_generations=sum(m.rows_of("dropped_generations") for m in manifests),
        dropped_by_reason=dict(sum((Counter(m.dropped_by_reason) for m in metrics), Counter()).most_common()),
        generated_tokens=sum(m.generated_tokens for m in metrics),
        wall_s=round(wall_s, 1),
        engine_start_s=round(sum(m.engine_start_s for m in metrics), 1),
        generate_s=round(generate_s, 1),
        output_tokens_per_s=round(attempt_tokens / generate_s, 1) if generate_s else None,
        gpu_hours=round(wall_s * config.tensor_parallel_size / 3600, 4) if config.backend == "vllm" else None,
    )


def format_summary(summary: RunSummary) -> str:
    """The summary as a few aligned lines for the task log."""
    lines = [f"run summary {summary.dag_id} / {summary.run_id}", f"  folder    {summary.run_folder}"]
    lines += [f"  {stage:<9} {state}" for stage, state in summary.stages.items()]
    if summary.cause:
        lines += format_cause(summary.cause)
    if e := summary.extracted:
        lines.append(f"  extract: files={e.files}, documents={e.documents}, skipped_known={e.skipped_known}, "
                     f"rejects={e.rejects} {e.rejects_by_reason or ''}".rstrip())
    if c := summary.chunked:
        lines.append(f"  chunk: chunks={c.chunks}, shards={c.shards}, duplicate_chunks={c.duplicate_chunks} "
                     f"(near: {c.near_duplicate_chunks}), earlier_run_duplicates={c.earlier_run_duplicates}, "
                     f"short_chunks={c.short_chunks}, filtered={sum(c.filtered.values())}")
        if c.filtered:  # the quality filters' table: one line per reason
            width = max(map(len, c.filtered))
            lines += ["    quality filter" + " " * (width - 12) + "chunks"]
            lines += [f"    {reason:<{width + 2}}{count}" for reason, count in c.filtered.items()]
    if g := summary.generated:
        lines.append(f"  generate: prompts={g.prompts}, examples={g.examples}, dropped={g.dropped_generations}, "
                     f"tokens={g.generated_tokens}, engine_start_s={g.engine_start_s}, "
                     f"output_tokens_per_s={g.output_tokens_per_s}, "
                     f"gpu_hours={g.gpu_hours}")
    if v := summary.validated:
        lines.append(f"  validate: examples_in={v.examples_in}, passed={v.passed}, quarantined={v.quarantined}, "
                     f"pass_rate={v.quality.pass_rate}, report={v.quality.report_uri}")
    if p := summary.published:
        lines.append(f"  publish: examples={p.examples}, examples_added={p.examples_added}, "
                     f"duplicates_skipped={p.duplicates_skipped}, near_duplicates_skipped={p.near_duplicates_skipped}, "
                     f"dataset={p.dataset_uri}" + (f", hub={p.hub_url}" if p.hub_url else ""))
    return "\n".join(lines)
