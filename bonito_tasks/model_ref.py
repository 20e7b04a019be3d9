"""What `model_id` names: a local model folder or a Hugging Face Hub repo id.

Checked where the model is loaded (chunk's tokenizer, the vLLM engine), not when the config is
validated: a config may be validated on a machine that does not hold the model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bonito_tasks.errors import PermanentFailure

# 'name' or 'namespace/name', as huggingface_hub's validate_repo_id accepts them.
HUB_REPO_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]{1,96}")


class ModelNotFound(PermanentFailure):
    """`model_id` is a local path that does not exist, or neither a folder nor a Hub repo id."""


def looks_like_path(model_id: str) -> bool:
    """Whether `model_id` is meant as a filesystem path rather than a Hub repo id: it starts with
    '/', '.' or '~', or holds a path separator a Hub id cannot hold ('a/b/c', a backslash)."""
    if model_id.startswith(("/", ".", "~")):
        return True
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in model_id for sep in separators) and not is_hub_repo_id(model_id)


def is_hub_repo_id(model_id: str) -> bool:
    return bool(HUB_REPO_ID.fullmatch(model_id)) and "--" not in model_id and ".." not in model_id


def check_model_reachable(model_id: str) -> None:
    """Raise ModelNotFound (a PermanentFailure) when `model_id` can be neither a local model
    (an existing path) nor a Hub repo id; a well-formed Hub id passes (the Hub is asked later)."""
    if Path(model_id).expanduser().exists():
        return
    if looks_like_path(model_id):
        raise ModelNotFound(f"model_id {model_id!r} does not exist (and is not a Hub repo id): "
                            "give an existing local model folder or a Hub id such as 'BatsResearch/bonito-v1'")
    if not is_hub_repo_id(model_id):
        raise ModelNotFound(f"model_id {model_id!r} is neither an existing local folder nor a Hub repo id "
                            "('name' or 'namespace/name')")
