"""Generate on a real vLLM engine (CPU build) with the bundled tiny Bonito model."""

import json
from collections import Counter

import pytest

from bonito_tasks.contracts import EXAMPLES, RunRef
from bonito_tasks.generate.run import generate_shard
from bonito_tasks.store import LocalStore
from bonito_tasks.task_types import TASK_TYPES
from conftest import make_config, paragraph_chunks

pytestmark = pytest.mark.vllm
RUN = RunRef(dag_id="d", run_id="r1")


def test_all_task_types_parse_with_lineage(tmp_path, vllm_engine):
    store = LocalStore(tmp_path / "store")
    chunks, rows = paragraph_chunks(store, RUN, 4)
    config = make_config(tmp_path, task_types=list(TASK_TYPES), n=2)
    manifest = generate_shard(store, RUN, config, chunks, 0, engine=vllm_engine)

    examples = store.read_table(manifest, "examples")
    dropped = store.read_table(manifest, "dropped_generations")
    m = manifest.metrics
    assert examples.schema == EXAMPLES
    assert m.prompts == 4 * 16 and m.generations == 4 * 16 * 2
    # Every (chunk, task type, sample) is accounted for exactly once.
    keys = [(r["chunk_id"], r["task_type"], r["sample_index"]) for t in (examples, dropped) for r in t.to_pylist()]
    assert len(keys) == len(set(keys)) == m.generations
    parse_failures = sum(m.parse_failures.values())
    assert parse_failures == sum(r in ("no_pipe", "extra_pipe") for r in dropped["reason"].to_pylist())
    assert parse_failures <= 0.05 * m.generations, m.parse_failures
    assert m.dropped_by_reason == dict(Counter(dropped["reason"].to_pylist()))  # what the view's previews trust
    assert set(examples["task_type"].to_pylist()) == set(TASK_TYPES)
    assert m.generated_tokens > 0 and m.output_tokens_per_s > 0

    by_chunk = {r["chunk_id"]: r for r in rows}
    for ex in examples.to_pylist():
        chunk = by_chunk[ex["chunk_id"]]
        assert (ex["char_start"], ex["char_end"], ex["doc_id"]) == (chunk["char_start"], chunk["char_end"], "doc")
        assert ex["sample_index"] in (0, 1) and ex["run_id"] == "r1"
        assert ex["model_revision"].startswith("sha256:")
        assert json.loads(ex["sampling_params"]) == config.sampling_params()
        assert "<|pipe|>" not in ex["input"] + ex["output"] and "{{context}}" not in ex["input"]
    keys = [(e["chunk_id"], e["input"], e["output"]) for e in examples.to_pylist()]
    assert len(keys) == len(set(keys))

    # A retry of a committed shard does no work and returns the same commit.
    assert generate_shard(store, RUN, config, chunks, 0, engine=None) == manifest
