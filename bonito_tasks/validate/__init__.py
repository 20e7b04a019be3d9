"""Validate stage: Great Expectations suites as code, the gate and quarantine over generated
examples, Data Docs and the quality report."""

from bonito_tasks.checks.gx import SuiteRun, ValidationFailed
from bonito_tasks.validate.run import ExamplesCheck, check_examples, validate
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
    "dataset_expectations",
    "example_expectations",
    "validate",
]
