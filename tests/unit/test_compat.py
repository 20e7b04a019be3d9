"""Pins each shim over a dependency's private internals (bonito_tasks/compat.py and
plugins/bonito_airflow/compat.py): when an upgrade moves one, the test named after it fails here."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bonito_tasks.compat import (
    hf_request_timeout,
    shutdown_vllm,
    torch_precompiled_header_dir,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hf_factory():
    """Puts back huggingface_hub's client factory (and a fresh shared client) after the test."""
    from huggingface_hub import close_session, set_client_factory
    from huggingface_hub.utils import _http

    installed = _http._GLOBAL_CLIENT_FACTORY
    yield installed
    set_client_factory(installed)
    close_session()


def test_hf_request_timeout_bounds_the_shared_client_and_restores_the_factory(hf_factory):
    import httpx2
    from huggingface_hub import close_session, get_session, set_client_factory
    from huggingface_hub.utils import _http

    def user_factory():  # e.g. a proxy or certificates a user configured: must be kept
        return httpx2.Client(headers={"x-user-setting": "kept"})

    set_client_factory(user_factory)
    assert get_session().timeout == httpx2.Timeout(5.0)  # httpx2's default, nothing of ours
    with hf_request_timeout(7.5):
        session = get_session()
        assert session.timeout == httpx2.Timeout(7.5)
        assert session.headers["x-user-setting"] == "kept"
        close_session()  # huggingface_hub does this after a connection error: the bound must survive it
        assert get_session().timeout == httpx2.Timeout(7.5)
    assert _http._GLOBAL_CLIENT_FACTORY is user_factory
    assert get_session().timeout == httpx2.Timeout(5.0)


def test_vllm_engine_core_shutdown_path_exists():
    """`LLM.llm_engine.engine_core.shutdown()`, read from vLLM's classes without starting an engine."""
    vllm = pytest.importorskip("vllm")
    from vllm.v1.engine.core_client import EngineCoreClient
    from vllm.v1.engine.llm_engine import LLMEngine

    assert re.search(r"self\.llm_engine\s*=\s*LLMEngine\b", inspect.getsource(vllm.LLM.__init__))
    assert re.search(r"self\.engine_core\s*=\s*EngineCoreClient\.make_client\(", inspect.getsource(LLMEngine))
    clients = [EngineCoreClient]
    for cls in clients:
        clients += cls.__subclasses__()
    concrete = [cls for cls in clients if not inspect.isabstract(cls)]
    assert concrete, "no concrete EngineCoreClient"
    for cls in concrete:
        params = list(inspect.signature(cls.shutdown).parameters.values())[1:]
        assert all(p.default is not p.empty for p in params), f"{cls.__name__}.shutdown() needs arguments"

    calls = []
    engine_core = SimpleNamespace(shutdown=lambda: calls.append(1))
    shutdown_vllm(SimpleNamespace(llm_engine=SimpleNamespace(engine_core=engine_core)))
    assert calls == [1]


def test_torch_precompiled_header_dir_is_where_inductor_builds_its_headers():
    """torch's fixed folder for precompiled headers: under torch's default cache folder (not
    TORCHINDUCTOR_CACHE_DIR), where `_precompile_header` writes."""
    pytest.importorskip("torch")
    from torch._inductor import codecache
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    folder = torch_precompiled_header_dir()
    assert folder == Path(default_cache_dir()) / "precompiled_headers"
    assert "specified_dir=_HEADER_DIR" in inspect.getsource(codecache._precompile_header)


def test_airflow_redact_masks_the_secrets_airflow_knows_of():
    from airflow.sdk.log import mask_secret

    from bonito_airflow.compat import redact

    mask_secret("compat-s3cr3t-value")
    assert redact({"message": "401 for compat-s3cr3t-value", "count": 3, "password": "plain"}) == {
        "message": "401 for ***", "count": 3, "password": "***"}
    assert redact(["compat-s3cr3t-value"]) == ["***"]


def test_task_supervisor_is_recognised_by_the_blocked_database_url(monkeypatch):
    from bonito_airflow.compat import under_task_supervisor

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db")  # dag.test(), plain Python
    assert not under_task_supervisor()
    # What Airflow's supervisor does in the task process before the task runs, in a child so this one is untouched.
    code = ("from airflow.sdk.execution_time.supervisor import block_orm_access\n"
            "from bonito_airflow.compat import under_task_supervisor\n"
            "assert not under_task_supervisor()\n"
            "block_orm_access()\n"
            "print(under_task_supervisor())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
