"""A real CPU vLLM engine whose compile cache a killed start left broken: the next start heals it.

The first start compiles into a fresh cache (~60 s on 2 cores); its kernels (`inductor/*/*.so`)
are then cut to 0 bytes, as a SIGKILL during the C++ build leaves them. Without the heal every
later start on the worker fails (the CPU build's vector-ISA probe library is one of them, and
kernels then fail to compile: "'at::vec' has not been declared")."""

from __future__ import annotations

import logging
import os
import time

import pytest

from bonito_tasks.config import RunConfig
from bonito_tasks.generate import compile_cache
from bonito_tasks.generate.engine import VllmEngine
from conftest import SAMPLE_DOCS, TINY_MODEL

pytestmark = pytest.mark.vllm
PROMPTS = ["The licensor grants you a license to", "Redistribution of the work"]
GREEDY = {"max_tokens": 8, "temperature": 0.0}


def _generate(config: RunConfig) -> list[str]:
    engine = VllmEngine(config).load()
    try:
        return [c[0].text for c in engine.generate(PROMPTS, GREEDY)]
    finally:
        engine.unload()


def test_compile_cache_truncated_by_a_killed_start_is_healed_by_the_next_start(tmp_path, monkeypatch, caplog):
    root = tmp_path / "compile-cache"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(root))
    for var in compile_cache.CACHE_ENV:
        monkeypatch.setenv(var, "")  # the engine points them under root; put back after the test
    config = RunConfig(source=str(SAMPLE_DOCS), store="/unused", model_id=str(TINY_MODEL), dtype="float32")

    first = _generate(config)
    kernels = sorted((root / "inductor").rglob("*.so"))
    assert len(kernels) >= 5, f"the CPU build wrote no compiled kernels under {root}"
    stamp = time.time() - 600  # left by a start killed ten minutes ago
    for path in kernels:
        path.write_bytes(b"")
        os.utime(path, (stamp, stamp))

    with caplog.at_level(logging.WARNING, logger=compile_cache.__name__):
        second = _generate(config)

    assert second == first
    messages = [r.getMessage() for r in caplog.records if r.name == compile_cache.__name__]
    assert len(messages) == 1 and f"removed {len(kernels)} broken compile-cache entries" in messages[0]
    for path in kernels:
        assert f"{path} (empty)" in messages[0]
    rebuilt = [path for path in kernels if path.exists()]
    assert rebuilt and all(path.stat().st_size > 0 for path in rebuilt)
    assert compile_cache.find_broken(compile_cache.CompileCache(root, (root,)), now=time.time() + 3600) == {}
