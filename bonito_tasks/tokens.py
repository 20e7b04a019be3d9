"""The run's model tokenizer, for the stages that count tokens: chunk cuts by it, and validate's
quality report measures output lengths with it (the same tokens the model generated)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from bonito_tasks.config import RunConfig

log = logging.getLogger(__name__)
ENCODE_BATCH = 4096  # texts per encode_batch call: bounds the memory of the encodings held at once


def load_tokenizer(config: RunConfig, local_files_only: bool = False) -> Any:
    """The model's tokenizer; with `local_files_only`, only from a local path or the HF cache (no
    network: OSError when it is not there)."""
    from bonito_tasks.model_ref import check_model_reachable

    check_model_reachable(config.model_id)  # ModelNotFound (no retries) for a path that does not exist
    from transformers import PreTrainedTokenizerFast

    try:
        # The model's tokenizer.json as it is: the same tokens as its AutoTokenizer class (which only adds
        # special-token handling, unused here), without importing torch (about 480 MiB of the task's memory).
        # revision None: the repo's default branch (transformers handles None though it annotates str)
        return PreTrainedTokenizerFast.from_pretrained(config.model_id,
                                                       revision=config.model_revision,  # type: ignore[arg-type]
                                                       local_files_only=local_files_only)
    except (OSError, ValueError):  # no tokenizer.json: only the model's own (slow) tokenizer class reads it
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(config.model_id, revision=config.model_revision,
                                             local_files_only=local_files_only)


def count_tokens(config: RunConfig, texts: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Tokens of each text by the run's model tokenizer (no special tokens), or None when the
    tokenizer is not on this worker: a local model's folder, or the HF cache, where the chunk tasks
    put it (a report never waits on the network). The caller then says its lengths are estimates."""
    from bonito_tasks.model_ref import ModelNotFound

    try:
        tokenizer = load_tokenizer(config, local_files_only=True)
    except (OSError, ValueError, ModelNotFound) as error:
        log.warning("the tokenizer of %s is not on this worker (%s): output lengths are estimated as UTF-8 "
                    "bytes / 4", config.model_id, str(error).splitlines()[0])
        return None
    values = texts.to_pylist()
    counts = np.zeros(len(values), dtype=np.int64)
    for start in range(0, len(values), ENCODE_BATCH):
        batch = [v or "" for v in values[start:start + ENCODE_BATCH]]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        counts[start:start + len(batch)] = [len(ids) for ids in encoded]
    return counts


def tokenizer_name(config: RunConfig) -> str:
    """How a report names the tokenizer: the Hub id, or a local model's folder name (never its path)."""
    from pathlib import Path

    return Path(config.model_id).name if Path(config.model_id).exists() else config.model_id
