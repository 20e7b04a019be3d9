"""Out of memory at engine load (where it usually strikes): each retry of the shard starts its
engine with half the max_num_seqs of the attempt before. No engine is started: VllmEngine.load is
replaced by one that fails the way the real one does when vLLM runs out of memory."""

import json

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.generate import engine as engine_module
from bonito_tasks.generate.engine import DEFAULT_MAX_NUM_SEQS, EngineFailure, VllmEngine
from bonito_tasks.generate.run import ENGINE_FAILURES, generate_shard
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import make_config, paragraph_chunks

RUN = RunRef(dag_id="d", run_id="oom")


@pytest.fixture
def loads(monkeypatch):
    """The max_num_seqs of every engine load; each load runs out of memory."""
    seen = []

    def load(self):
        seen.append(self.max_num_seqs)
        err = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # what torch raises inside LLM()
        raise engine_module._as_engine_failure(err, self.config, self.max_num_seqs) from err

    monkeypatch.setattr(VllmEngine, "load", load)
    return seen


@pytest.mark.parametrize(("max_num_seqs", "expected"), [
    (None, [None, DEFAULT_MAX_NUM_SEQS // 2, DEFAULT_MAX_NUM_SEQS // 4]),
    (40, [40, 20, 10]),
])
def test_each_retry_after_an_out_of_memory_load_halves_max_num_seqs(tmp_path, loads, max_num_seqs, expected):
    store = LocalStore(tmp_path / "store")
    chunks, _ = paragraph_chunks(store, RUN, 3)
    config = make_config(tmp_path, max_num_seqs=max_num_seqs)
    for _attempt in range(3):  # the task, then two retries of the same shard
        with pytest.raises(EngineFailure, match="ran out of memory") as failed:
            generate_shard(store, RUN, config, chunks, 0)
        assert failed.value.kind == "out_of_memory"
    assert loads == expected

    prefix = StageWriter(store, RUN, "generate", partition=0).prefix
    recorded = json.loads(store.read_bytes(f"{prefix}/{ENGINE_FAILURES}"))
    assert [f["kind"] for f in recorded] == ["out_of_memory"] * 3
    assert "Lower max_num_seqs" in recorded[-1]["error"]
