"""What the last run of a DAG measured of generation (engine start, seconds per generation), kept
next to the ledger so the next run can size its generate shards (chunk.generate_shard_size)."""

from __future__ import annotations

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import GenerateFigures, GenerateMetrics, RunRef
from bonito_tasks.store import ArtifactStore, safe_segment

FIGURES_KEY = "_figures/generate.json"  # under the DAG's folder


def _key(dag_id: str) -> str:
    return f"{safe_segment(dag_id)}/{FIGURES_KEY}"


def read_figures(store: ArtifactStore, dag_id: str, config: RunConfig) -> GenerateFigures | None:
    """The figures of the DAG's last run, if it ran the same model on the same backend and GPUs."""
    if not store.exists(_key(dag_id)):
        return None
    figures = GenerateFigures.model_validate_json(store.read_bytes(_key(dag_id)))
    same = (figures.model_id, figures.backend, figures.tensor_parallel_size) == (
        config.model_id, config.backend, config.tensor_parallel_size)
    return figures if same else None


def record_figures(store: ArtifactStore, run: RunRef, config: RunConfig, shards: list[GenerateMetrics]) -> None:
    """Keep this run's figures when its shards started engines and generated something."""
    started = [m.engine_start_s for m in shards if m.engine_start_s > 0]
    generations = sum(m.generations - m.resumed_prompts * config.n for m in shards)
    generate_s = sum(m.generate_s for m in shards)
    if not started or generations <= 0 or generate_s <= 0:
        return
    figures = GenerateFigures(
        run_id=run.run_id, model_id=config.model_id, backend=config.backend,
        tensor_parallel_size=config.tensor_parallel_size, engine_start_s=round(sum(started) / len(started), 3),
        seconds_per_generation=generate_s / generations,
    )
    store.write_bytes(_key(run.dag_id), figures.model_dump_json(indent=2).encode())
