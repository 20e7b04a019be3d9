"""The in-process vLLM engine with an explicit load/unload lifecycle."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import sha256_hex

log = logging.getLogger(__name__)


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


class VllmEngine:
    """vllm.LLM built from a RunConfig. Use as a context manager so the engine is always released."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.llm = None

    def load(self) -> VllmEngine:
        from vllm import LLM

        c = self.config
        engine_args = dict(
            model=c.model_id,
            revision=c.model_revision,
            seed=c.seed,
            max_model_len=c.max_model_len,
            dtype=c.dtype,
            quantization=c.quantization,
            tensor_parallel_size=c.tensor_parallel_size,
            gpu_memory_utilization=c.gpu_memory_utilization,
        )
        if c.max_num_seqs:
            engine_args["max_num_seqs"] = c.max_num_seqs
        log.info("starting vLLM engine: %s", engine_args)
        self.llm = LLM(**engine_args)
        return self

    def generate(self, prompts: list[str], sampling_params: dict) -> list[list[Completion]]:
        """For each prompt, its n completions, in prompt order."""
        from vllm import SamplingParams

        params = SamplingParams(**sampling_params)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids)) for o in out.outputs] for out in outputs]

    def unload(self) -> None:
        if self.llm is None:
            return
        # Without an explicit shutdown the engine-core process outlives the task by minutes.
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()

    def __enter__(self) -> VllmEngine:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.unload()
