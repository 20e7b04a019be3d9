"""Operator arguments a DAG may give as an upstream task's output (an `XComArg`).

Airflow resolves such an argument (it is one of the operator's `template_fields`) before `execute`,
so the operator's constructor takes `Templated[T]` and its execute reads `resolved(value)`: a `T`.
"""

from __future__ import annotations

from typing import TypeAlias, TypeVar

from airflow.sdk import XComArg

T = TypeVar("T")

Templated: TypeAlias = T | XComArg  # the value itself, or the XComArg Airflow replaces with it before execute


def resolved(value: Templated[T]) -> T:
    """The value of a templated argument in `execute`, where Airflow has resolved its XComArg."""
    if isinstance(value, XComArg):
        raise TypeError(f"{value!r} was not resolved before execute: is the argument among template_fields?")
    return value
