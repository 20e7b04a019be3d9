"""What the last run of a DAG measured of generation (engine start, seconds per generation), kept
next to the ledger so the next run can size its generate shards (chunk.generate_shard_size)."""

from __future__ import annotations

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import GenerateFigures, GenerateMetrics, RunRef
from bonito_tasks.store import ArtifactStore, safe_segment

FIGURES_KEY = "_figures/generate.json"  # under the DAG's folder
PREVIOUS_KEY = "_figures/generate.previous.json"  # the run before it


def _key(dag_id: str, name: str = FIGURES_KEY) -> str:
    return f"{safe_segment(dag_id)}/{name}"


def _read(store: ArtifactStore, key: str) -> GenerateFigures | None:
    return GenerateFigures.model_validate_json(store.read_bytes(key)) if store.exists(key) else None


def read_figures(store: ArtifactStore, run: RunRef, config: RunConfig) -> GenerateFigures | None:
    """The figures of the DAG's last run other than `run` (a retried run sizes its shards as its
    first attempt did), if it ran the same model on the same backend and GPUs."""
    figures = _read(store, _key(run.dag_id))
    if figures is not None and figures.run_id == run.run_id:
        figures = _read(store, _key(run.dag_id, PREVIOUS_KEY))
    if figures is None:
        return None
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
    last = _read(store, _key(run.dag_id))
    if last is not None and last.run_id != run.run_id:
        store.write_bytes(_key(run.dag_id, PREVIOUS_KEY), last.model_dump_json(indent=2).encode())
    store.write_bytes(_key(run.dag_id), figures.model_dump_json(indent=2).encode())
