"""Validate stage: Great Expectations suites as code and the gate over generated examples."""

from bonito_tasks.validate.run import ValidationFailed, SuiteRun, run_suite, validate
from bonito_tasks.validate.suites import EXAMPLES_SUITE, SUITE_VERSION, build_examples_suite, example_expectations

__all__ = [
    "EXAMPLES_SUITE",
    "SUITE_VERSION",
    "SuiteRun",
    "ValidationFailed",
    "build_examples_suite",
    "example_expectations",
    "run_suite",
    "validate",
]
