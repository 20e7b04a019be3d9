"""The 16 Bonito task types: short names, full names (as the model was trained on them)."""

from __future__ import annotations

TASK_TYPES: dict[str, str] = {
    "exqa": "extractive question answering",
    "mcqa": "multiple-choice question answering",
    "qg": "question generation",
    "qa": "question answering without choices",
    "ynqa": "yes-no question answering",
    "coref": "coreference resolution",
    "paraphrase": "paraphrase generation",
    "paraphrase_id": "paraphrase identification",
    "sent_comp": "sentence completion",
    "sentiment": "sentiment",
    "summarization": "summarization",
    "text_gen": "text generation",
    "topic_class": "topic classification",
    "wsd": "word sense disambiguation",
    "te": "textual entailment",
    "nli": "natural language inference",
}



def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


_BY_KEY = {**{_key(full): short for short, full in TASK_TYPES.items()}, **{_key(s): s for s in TASK_TYPES}}


class UnknownTaskType(ValueError):
    pass


def normalize_task_type(name: str) -> str:
    """Return the short name for a short or full task-type name (case and spacing tolerant)."""
    if (short := _BY_KEY.get(_key(name))) is not None:
        return short
    valid = ", ".join(f"{short} ({full})" for short, full in TASK_TYPES.items())
    raise UnknownTaskType(f"unknown task type {name!r}; valid task types: {valid}")


def full_name(short: str) -> str:
    return TASK_TYPES[normalize_task_type(short)]
