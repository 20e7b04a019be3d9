"""Checks every stage uses: the Great Expectations harness and the stage-boundary contracts."""

from bonito_tasks.checks.boundaries import check_chunks, check_documents
from bonito_tasks.checks.gx import ValidationFailed

__all__ = ["ValidationFailed", "check_chunks", "check_documents"]
