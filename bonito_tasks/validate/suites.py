"""Expectation suites as code: the checks an example row must pass, built from the run config.

Every expectation carries a stable name in `meta["name"]`; results, metrics and (later) the
quarantine table cite checks by that name. Bump SUITE_VERSION whenever the checks change.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES
from bonito_tasks.generate.prompt import CONTEXT_PLACEHOLDER, MARKERS
from bonito_tasks.task_types import TASK_TYPES

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.expectations import Expectation

EXAMPLES_SUITE = "bonito_examples"
SUITE_VERSION = "1"

# Any Bonito marker or an unfilled placeholder left in the text means post-processing went wrong.
LEFTOVER_MARKUP_REGEX = "|".join(re.escape(token) for token in (*MARKERS, CONTEXT_PLACEHOLDER))


def _named(name: str) -> dict:
    return {"name": name}


def example_expectations(config: RunConfig) -> list[Expectation]:
    import great_expectations.expectations as gxe

    known_task_types = sorted(TASK_TYPES)
    expectations: list[Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, meta=_named("has_rows"), description="at least one example row"
        )
    ]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=column, meta=_named(f"not_null:{column}"), description="no nulls")
        for column in EXAMPLES.names
    ]
    expectations += [
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="input",
            min_value=1,
            max_value=config.max_input_chars,
            meta=_named("input_length"),
            description=f"length between 1 and {config.max_input_chars} characters",
        ),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="output",
            min_value=config.min_output_chars,
            max_value=config.max_output_chars,
            meta=_named("output_length"),
            description=f"length between {config.min_output_chars} and {config.max_output_chars} characters",
        ),
    ]
    expectations += [
        gxe.ExpectColumnValuesToNotMatchRegex(
            column=column,
            regex=LEFTOVER_MARKUP_REGEX,
            meta=_named(f"no_leftover_markup:{column}"),
            description=f"no Bonito markers {', '.join(MARKERS)} and no {CONTEXT_PLACEHOLDER}",
        )
        for column in ("input", "output")
    ]
    expectations += [
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["input", "output"],
            meta=_named("unique_input_output"),
            description="each (input, output) pair occurs once",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="task_type",
            value_set=known_task_types,
            meta=_named("known_task_type"),
            description=f"one of the {len(known_task_types)} Bonito task types ({', '.join(known_task_types)})",
        ),
    ]
    return expectations


def build_examples_suite(config: RunConfig) -> ExpectationSuite:
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=EXAMPLES_SUITE, expectations=example_expectations(config), meta={"version": SUITE_VERSION}
    )
