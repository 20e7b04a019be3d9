"""Kill the process running a generate shard with SIGKILL at several points; the retry must
finish the shard with every (chunk_id, task_type, sample_index) exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonito_tasks.contracts import RunRef, sha256_hex
from bonito_tasks.generate.run import CHECKPOINT_PREFIX, generate_shard
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import REPO, SAMPLE_DOCS, commit_chunks, make_config

pytestmark = pytest.mark.vllm
RUN = RunRef(dag_id="d", run_id="r1")
WORKER = Path(__file__).with_name("generate_worker.py")


def chunk_stage(store, n_chunks: int):
    text = (SAMPLE_DOCS / "apache-2.0.txt").read_text()
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(". ") if len(s.split()) > 8]
    rows = []
    for i in range(n_chunks):
        piece = " ".join(sentences[i % len(sentences): i % len(sentences) + 2])
        rows.append({"chunk_id": sha256_hex(f"c{i}"), "doc_id": "doc", "chunk_index": i, "char_start": 0,
                     "char_end": len(piece), "n_tokens": 1, "text": piece})
    return commit_chunks(store, RUN, rows)


def checkpoints(store, prefix: str) -> int:
    return sum(1 for k in store.list(prefix) if k.rsplit("/", 1)[-1].startswith(CHECKPOINT_PREFIX))


def kill_after(store, prefix, config, chunks, min_checkpoints: int, startup_s: float = 0.0) -> None:
    """Start the worker, wait until it has written `min_checkpoints` (or for startup_s), SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(store.root), config.model_dump_json(), chunks.uri, "0"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    started = time.monotonic()
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (min_checkpoints and checkpoints(store, prefix) >= min_checkpoints) or (
                    not min_checkpoints and time.monotonic() - started >= startup_s):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the worker finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its vLLM engine-core process
        proc.wait()


def test_sigkill_at_several_points_then_retry_is_exactly_once(tmp_path, vllm_engine):
    store = LocalStore(tmp_path / "store")
    chunks = chunk_stage(store, 40)
    config = make_config(tmp_path, task_types=["exqa", "ynqa", "nli", "qa"], n=2, checkpoint_prompts=8)
    prefix = StageWriter(store, RUN, "generate", partition=0).prefix

    kill_after(store, prefix, config, chunks, 0, startup_s=3)  # during engine start: nothing written
    assert checkpoints(store, prefix) == 0
    kill_after(store, prefix, config, chunks, 2)
    first = checkpoints(store, prefix)
    kill_after(store, prefix, config, chunks, first + 3)
    second = checkpoints(store, prefix)
    assert 2 <= first < second
    assert not StageWriter(store, RUN, "generate", partition=0).committed()

    manifest = generate_shard(store, RUN, config, chunks, 0, engine=vllm_engine)
    examples = store.read_table(manifest, "examples").to_pylist()
    dropped = store.read_table(manifest, "dropped_generations").to_pylist()
    keys = [(r["chunk_id"], r["task_type"], r["sample_index"]) for r in examples + dropped]
    expected = {(sha256_hex(f"c{i}"), t, s) for i in range(40) for t in config.task_types for s in range(2)}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert len({(r["chunk_id"], r["input"], r["output"]) for r in examples}) == len(examples)
    assert manifest.metrics.resumed_prompts >= second
    assert manifest.metrics.checkpoints > second
    # Only files the manifest lists (plus checkpoint markers) remain: the dead attempts' extras are gone.
    listed = {f"{prefix}/{s.path}" for s in manifest.shards} | {f"{prefix}/_manifest.json"}
    assert {k for k in store.list(prefix) if CHECKPOINT_PREFIX not in k} == listed
