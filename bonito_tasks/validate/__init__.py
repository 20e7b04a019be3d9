"""Validate stage: Great Expectations suites as code, the gate and quarantine over generated
examples, Data Docs and the quality report; the row checks run per generate shard (shard.py), the
run's verdict in one reduce (run.py)."""

from bonito_tasks.checks.gx import SuiteRun, ValidationFailed
from bonito_tasks.validate.run import ExamplesCheck, check_examples, combine_validated, validate
from bonito_tasks.validate.shard import validate_shard
from bonito_tasks.validate.suites import (
    DATASET_SUITE,
    EXAMPLES_SUITE,
    LABEL_SETS,
    SUITE_VERSION,
    build_dataset_suite,
    build_examples_suite,
    dataset_expectations,
    example_expectations,
)

__all__ = [
    "DATASET_SUITE",
    "EXAMPLES_SUITE",
    "LABEL_SETS",
    "SUITE_VERSION",
    "ExamplesCheck",
    "SuiteRun",
    "ValidationFailed",
    "build_dataset_suite",
    "build_examples_suite",
    "check_examples",
    "combine_validated",
    "dataset_expectations",
    "example_expectations",
    "validate",
    "validate_shard",
]
