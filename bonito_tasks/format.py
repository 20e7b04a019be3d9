"""Bonito's prompt format (markers, prompt, target), exactly as the reference library builds it.

Shared by generate (prompts, parsing) and validate (markup checks), so it sits below both.
"""

from __future__ import annotations

from bonito_tasks.task_types import full_name

TASKTYPE_MARKER = "<|tasktype|>"
CONTEXT_MARKER = "<|context|>"
TASK_MARKER = "<|task|>"
PIPE_MARKER = "<|pipe|>"
CONTEXT_PLACEHOLDER = "{{context}}"
MARKERS = (TASKTYPE_MARKER, CONTEXT_MARKER, TASK_MARKER, PIPE_MARKER)


def build_prompt(context: str, task_type: str) -> str:
    return f"{TASKTYPE_MARKER}\n{full_name(task_type)}\n{CONTEXT_MARKER}\n{context.strip()}\n{TASK_MARKER}\n"


def build_target(instruction: str, response: str) -> str:
    """The training target: an instruction holding {{context}}, the pipe, the response."""
    return f"{instruction}\n{PIPE_MARKER}\n{response}"
