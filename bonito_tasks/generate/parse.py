"""Turn one Bonito generation into an (input, output) pair, as the reference post-processing does."""

from __future__ import annotations

from dataclasses import dataclass

from bonito_tasks.format import CONTEXT_PLACEHOLDER, PIPE_MARKER


@dataclass(frozen=True)
class Parsed:
    input: str
    output: str


class ParseFailure(ValueError):
    """A generation that does not split into instruction and response; `reason` is a stable label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_generation(text: str, context: str) -> Parsed:
    parts = text.split(PIPE_MARKER)
    if len(parts) != 2:
        raise ParseFailure("no_pipe" if len(parts) == 1 else "extra_pipe")
    context = context.strip()
    instruction = parts[0].strip().replace(CONTEXT_PLACEHOLDER, context)
    response = parts[1].strip().replace(CONTEXT_PLACEHOLDER, context)
    return Parsed(instruction, response)
