"""The compile-cache heal without an engine: which entries count as broken, and that a failed start
is retried exactly once after removing them (tests/integration/test_compile_cache.py starts real engines)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from bonito_tasks.generate import compile_cache
from bonito_tasks.generate.compile_cache import (
    CompileCache,
    CompileCacheHealed,
    CompileCacheStillFailing,
    broken_reason,
    cache_root,
    find_broken,
    start_with_healing,
    use_compile_cache,
)

A_REAL_SO = Path(__import__("_ctypes").__file__)  # a whole shared object to copy and cut


def _old(path: Path) -> Path:
    """Dated 10 minutes back: left by an earlier (killed) start, not being written now."""
    stamp = time.time() - 600
    os.utime(path, (stamp, stamp))
    return path


def _write(path: Path, data: bytes, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return _old(path) if old else path


@pytest.fixture
def cache(tmp_path) -> CompileCache:
    root = tmp_path / "compile"
    return CompileCache(root, (root / "inductor", root / "vllm", root / "triton", tmp_path / "pch"))


def test_broken_reason_tells_truncated_entries_from_whole_ones(tmp_path):
    so = A_REAL_SO.read_bytes()
    cases = {
        "whole.so": (so, None),
        "empty.so": (b"", "empty"),
        "half.so": (so[: len(so) // 2], "truncated shared object"),
        "head_only.so": (so[:40], "truncated shared object"),
        "not_elf.so": (b"#!/bin/sh\n" * 10, "truncated shared object"),
        "fxgraph/ab/entry": (pickle.dumps({"graph": list(range(100))}, protocol=4), None),
        "fxgraph/ab/cut_entry": (pickle.dumps({"graph": list(range(100))}, protocol=4)[:-20], "truncated pickle"),
        "aotautograd/ab/cut": (pickle.dumps(list(range(100)), protocol=5)[:-1], "truncated pickle"),
        "graph.pkl": (pickle.dumps(list(range(100)), protocol=2)[:-3], "truncated pickle"),
        "vllm/artifact_subgraph_0": (b"\x80\x04" + b"\1" * 100, None),  # binary, not a pickle: never judged
        "k.json": (b'{"a": 1}', None),
        "cut.json": (b'{"a": ', "unreadable json (JSONDecodeError)"),
        "kernel.py": (b"def f(x):\n    return x\n", None),
        "cut_kernel.py": (b"def f(x):\n    return (x", "unreadable py (SyntaxError)"),
        "x.h.gch": (b"gpch+014" + b"\0" * 100, None),
        "bad.h.gch": (b"\0" * 100, "not a precompiled header"),
        "empty.h": (b"", "empty"),
        "k.lock": (b"", None),
        "__init__.py": (b"", None),
        "kernel.cpp": (b"int x", None),  # sources are only read to compile: never judged
    }
    for name, (data, expected) in cases.items():
        assert broken_reason(_write(tmp_path / name, data)) == expected, name


def test_find_broken_leaves_entries_written_in_the_last_minute_alone(cache):
    old = _write(cache.folders[0] / "ab" / "old.so", b"")
    _write(cache.folders[0] / "cd" / "being_written.so", b"", old=False)  # another engine's build, maybe
    gch = _write(cache.folders[3] / "c1.h.gch", b"gpch" + b"\0" * 10)
    empty_header = _write(cache.folders[3] / "c2.h", b"")
    assert find_broken(cache) == {old: "empty", empty_header: "empty"}
    assert gch.exists()


def test_compile_cache_heal_removes_a_killed_starts_leftovers_before_the_start_and_logs_them(cache, caplog):
    so = A_REAL_SO.read_bytes()
    empty = _write(cache.folders[0] / "ab" / "cab.so", b"")
    cut = _write(cache.folders[2] / "xyz" / "launcher.so", so[:1000])
    whole = _write(cache.folders[0] / "cd" / "ccd.so", so)
    lock = _write(cache.folders[0] / "locks" / "cab.lock", b"")
    starts = []

    def start():
        starts.append(empty.exists() or cut.exists())
        return "engine"

    with caplog.at_level(logging.WARNING, logger=compile_cache.__name__):
        assert start_with_healing(start, cache) == "engine"
    assert starts == [False]  # one start, after the removal
    assert whole.exists() and lock.exists()
    (record,) = [r for r in caplog.records if r.name == compile_cache.__name__]
    message = record.getMessage()
    assert "removed 2 broken compile-cache entries before the engine start" in message
    assert f"{empty} (empty)" in message and f"{cut} (truncated shared object)" in message
    assert str(whole) not in message


def test_compile_cache_heal_after_a_failed_start_removes_once_and_starts_again(cache, caplog):
    starts = []

    def start():
        starts.append(1)
        if len(starts) == 1:  # what the parent sees when vLLM's worker failed on a broken .so
            _write(cache.folders[0] / "ab" / "cab.so", b"")
            raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
        return "engine"

    with caplog.at_level(logging.WARNING, logger=compile_cache.__name__):
        assert start_with_healing(start, cache) == "engine"
    assert len(starts) == 2
    assert not (cache.folders[0] / "ab" / "cab.so").exists()
    (record,) = [r for r in caplog.records if r.name == compile_cache.__name__]
    message = record.getMessage()
    assert "engine start failed (RuntimeError: Engine core initialization failed" in message
    assert f"removed 1 broken compile-cache entries, starting again: {cache.folders[0] / 'ab' / 'cab.so'} (empty)" \
        in message


def test_compile_cache_heal_raises_the_first_error_when_nothing_is_broken(cache):
    _write(cache.folders[0] / "cd" / "ccd.so", A_REAL_SO.read_bytes())
    starts = []

    def start():
        starts.append(1)
        raise ValueError("max_model_len 99999 is larger than the model's 2048")

    with pytest.raises(ValueError, match="max_model_len"):
        start_with_healing(start, cache)
    assert len(starts) == 1


def test_compile_cache_heal_is_tried_once_and_a_second_failure_names_its_cause(cache):
    starts = []

    def start():
        starts.append(1)
        _write(cache.folders[0] / "ab" / f"c{len(starts)}.so", b"")  # broken again each time: still no loop
        raise RuntimeError(f"start {len(starts)} failed")

    _write(cache.folders[0] / "ab" / "c0.so", b"")
    with pytest.raises(CompileCacheStillFailing, match=r"failed again after 1 broken compile-cache entries") as info:
        start_with_healing(start, cache)
    assert len(starts) == 2
    assert "RuntimeError: start 2 failed" in str(info.value)
    assert str(cache.root) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_compile_cache_heal_in_a_process_that_compiled_removes_and_leaves_the_start_to_a_fresh_process(cache, caplog):
    """retry_here=False (vLLM's engine core in this process): no second start in the process that
    remembers the failed load; CompileCacheHealed says the retry starts clean."""
    starts = []

    def start():
        starts.append(1)
        _write(cache.folders[0] / "ab" / "cab.so", b"")
        raise RuntimeError("C++ compile error: 'at::vec' has not been declared")

    with caplog.at_level(logging.WARNING, logger=compile_cache.__name__), \
            pytest.raises(CompileCacheHealed, match="retry \\(a fresh process\\) starts clean") as info:
        start_with_healing(start, cache, retry_here=False)
    assert len(starts) == 1 and not (cache.folders[0] / "ab" / "cab.so").exists()
    assert "at::vec" in str(info.value) and isinstance(info.value.__cause__, RuntimeError)
    assert f"{cache.folders[0] / 'ab' / 'cab.so'} (empty)" in caplog.text
    assert "the next try starts in a fresh process" in caplog.text


def test_a_broken_file_of_a_triton_cache_group_takes_the_whole_group_with_it(cache):
    """Triton keeps one folder per kernel whose `__grp__<kernel>.json` lists its files; a group
    missing a listed file (a heal that removed only the file did that) is loaded without it, and the
    kernel then fails to launch. So the whole folder goes, and an incomplete group counts as broken."""
    triton = cache.folders[2]
    group = triton / "NNESSKK7PW4G7VOO"
    cubin = _write(group / "triton_red_fused_sum_0.cubin", A_REAL_SO.read_bytes()[:100])
    for name in ("triton_red_fused_sum_0.json", "triton_red_fused_sum_0.ptx"):
        _write(group / name, b"{}")
    _write(group / "__grp__triton_red_fused_sum_0.json", json.dumps({"child_paths": {
        p.name: str(p) for p in group.iterdir()}}).encode())
    whole = triton / "HSKTB57AFPGHPBDT"
    _write(whole / "k.cubin", A_REAL_SO.read_bytes())
    _write(whole / "__grp__k.json", json.dumps({"child_paths": {"k.cubin": str(whole / "k.cubin")}}).encode())
    assert find_broken(cache) == {group: "Triton cache group: triton_red_fused_sum_0.cubin truncated shared object"}

    incomplete = triton / "3RI32H6ZFFCSM6QJ"
    _write(incomplete / "__grp__k.json", json.dumps({"child_paths": {
        "k.cubin": str(incomplete / "k.cubin"), "k.json": str(incomplete / "k.json")}}).encode())
    _write(incomplete / "k.json", b"{}")
    start_with_healing(lambda: "engine", cache)
    assert not group.exists() and not incomplete.exists() and not cubin.exists()
    assert (whole / "k.cubin").exists()


def test_compile_cache_heal_removes_what_the_error_names_as_unloadable(cache):
    """In-process errors name the file: a recent one is removed too, and for a precompiled header
    that cannot be read, its .gch (the command includes the .h)."""
    so = _write(cache.folders[0] / "ab" / "cab.so", A_REAL_SO.read_bytes(), old=False)
    header = _write(cache.folders[3] / "cpj.h", b"#include <x.h>\n", old=False)
    gch = _write(cache.folders[3] / "cpj.h.gch", b"gpch" + b"\0" * 10, old=False)

    def failing_once(error):
        errors = [error]

        def start():
            if errors:
                raise errors.pop()
            return "engine"
        return start

    assert start_with_healing(failing_once(ImportError(f"{so}: file too short")), cache) == "engine"
    assert not so.exists()
    pch_error = RuntimeError(f"g++ x.cpp -include {header} -o y.so\n<command-line>: fatal error: cannot read PCH file")
    assert start_with_healing(failing_once(pch_error), cache) == "engine"
    assert not gch.exists() and header.exists()


def test_use_compile_cache_points_every_cache_under_the_root(tmp_path):
    environ = {"BONITO_COMPILE_CACHE_DIR": str(tmp_path / "cc"), "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}
    cache = use_compile_cache(environ)
    assert cache.root == tmp_path / "cc"
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "inductor")
    assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "cc" / "vllm")
    assert environ["TRITON_CACHE_DIR"] == str(tmp_path / "cc" / "triton")
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "bonito-etl" / "compile"
    assert cache_root({"BONITO_COMPILE_CACHE_DIR": " "}).parts[-2:] == ("bonito-etl", "compile")


@pytest.mark.parametrize(("multiprocessing", "starts_expected", "message"), [
    (None, 2, "failed again after 1 broken compile-cache entries"),
    ("0", 1, "the retry (a fresh process) starts clean"),
])
def test_engine_load_reports_a_failed_heal_as_engine_failure_with_the_cause(
        tmp_path, monkeypatch, caplog, multiprocessing, starts_expected, message):
    """VllmEngine.load with vLLM's LLM replaced by one that fails every start: with vLLM's engine
    core in child processes one heal and a second start, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
    as under Airflow) none; either way an EngineFailure that Airflow retries, naming the cause."""
    from bonito_tasks.generate.engine import EngineFailure, VllmEngine
    from conftest import make_config

    root = tmp_path / "cc"
    monkeypatch.setenv("BONITO_COMPILE_CACHE_DIR", str(root))
    if multiprocessing is None:
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    else:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", multiprocessing)
    for var in compile_cache.CACHE_ENV:
        monkeypatch.setenv(var, "")  # put back after the test
    monkeypatch.setattr(compile_cache, "torch_precompiled_header_dir", lambda: tmp_path / "pch")
    starts = []

    class FailingLLM:  # each start leaves a broken kernel behind, as a start killed mid-compile does
        def __init__(self, **kwargs):
            starts.append(os.environ["TORCHINDUCTOR_CACHE_DIR"])
            _write(root / "inductor" / "ab" / f"c{len(starts)}.so", b"")
            raise ImportError("cannot load kernel: undefined symbol")

    platforms = ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FailingLLM))
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    with caplog.at_level(logging.WARNING), pytest.raises(EngineFailure) as info:
        VllmEngine(make_config(tmp_path)).load()
    assert starts == [str(root / "inductor")] * starts_expected
    assert str(root / "inductor" / "ab" / "c1.so") in caplog.text
    assert info.value.kind == "engine_died"
    assert message in str(info.value)
    assert "ImportError: cannot load kernel: undefined symbol" in str(info.value)
    shutil.rmtree(root)
