"""Drift checks: tonight's scorecard against the last release's.

Distributions (labels per classification task type, output and input lengths per task type, the
task-type mix, the writing systems of the inputs) are checked with Great Expectations'
`expect_column_kl_divergence_to_be_less_than`: the baseline's histogram is the partition object
(smoothed: a category or range the baseline never saw gets half a row, so the divergence stays
finite), tonight's histogram is the column (its counts expanded into values, scaled to at most
`MAX_ROWS`). Rates (pass rate overall and per task type, duplicate rate, the share of extractive
answers found verbatim, the outputs' distinct-bigram share) are checked by their change from the
baseline. Each check has a warning and a failure threshold (RunConfig `drift_*`); a check that
cannot be computed says so (`not_computed`, counted as a warning: it never passes silently).
"""

from __future__ import annotations

import logging
import math
from typing import Any, TypedDict

from bonito_tasks.contracts import DriftCheck, DriftSeverity, Scorecard

log = logging.getLogger(__name__)

KL = "expect_column_kl_divergence_to_be_less_than"
RATE = "rate_change"
MAX_ROWS = 20_000  # a distribution's column: its counts scaled down to about this many values
SMOOTHING = 0.5  # rows added to every bin of the baseline's histogram
LENGTH_BINS = 12
TAIL = 0.01  # the baseline's weight for lengths outside its range
# Distinct-2 falls as a night grows (more text, more repeats of common bigrams): a change warns only.
WARN_ONLY = "depends on the night's size: warns, never fails"


def drift_checks(tonight: Scorecard, baseline: Scorecard, *, kl_warning: float | None, kl_failure: float | None,
                 rate_warning: float | None, rate_failure: float | None) -> list[DriftCheck]:
    """Every check of tonight against `baseline`, in a stable order."""
    checks: list[DriftCheck] = []

    def rate(name: str, base: float | None, now: float | None, note: str = "", *, warn_only: bool = False) -> None:
        failure = None if warn_only else rate_failure
        check = DriftCheck(name=name, kind="rate", expectation=RATE, baseline=base, tonight=now,
                           warning=rate_warning, failure=failure,
                           note=WARN_ONLY if warn_only else "")
        if base is None or now is None:
            check.severity, check.note = "not_computed", note or "the baseline has no such rate"
        else:
            check.value = round(now - base, 6)
            check.severity = _severity(abs(check.value), rate_warning, failure)
        checks.append(check)

    rate("pass rate", baseline.pass_rate if baseline.rows else None, tonight.pass_rate)
    rate("duplicate rate", baseline.duplicate_rate if baseline.rows else None, tonight.duplicate_rate)
    distributions: list[tuple[str, dict[Any, int], dict[Any, int], bool]] = [
        ("task-type mix", {t: s.passed for t, s in baseline.task_types.items()},
         {t: s.passed for t, s in tonight.task_types.items()}, False),
        ("writing systems", baseline.scripts, tonight.scripts, False)]
    for task, score in sorted(tonight.task_types.items()):
        base = baseline.task_types.get(task)
        if base is None:
            rate(f"pass rate of {task}", None, score.pass_rate, "a task type the baseline did not have")
            continue
        rate(f"pass rate of {task}", base.pass_rate if base.rows else None, score.pass_rate)
        if score.labels or base.labels:
            distributions.append((f"labels of {task}", base.labels, score.labels, False))
        distributions.append((f"output length of {task}", base.output_lengths, score.output_lengths, True))
        distributions.append((f"input length of {task}", base.input_lengths, score.input_lengths, True))
        if score.verbatim_share is not None or base.verbatim_share is not None:
            rate(f"verbatim answers of {task}", base.verbatim_share, score.verbatim_share)
        rate(f"bigram diversity of {task}", base.distinct_bigrams, score.distinct_bigrams, warn_only=True)
    todo = []
    for name, base_counts, now_counts, numeric in distributions:
        check = DriftCheck(name=name, kind="distribution", expectation=KL, warning=kl_warning, failure=kl_failure)
        checks.append(check)
        if not sum(base_counts.values()) or not sum(now_counts.values()):
            check.severity = "not_computed"
            check.note = "no baseline rows" if not sum(base_counts.values()) else "no rows tonight"
            continue
        partition, values, shown = (_numeric(base_counts, now_counts) if numeric
                                    else _categorical(base_counts, now_counts))
        check.baseline, check.tonight = shown
        todo.append((check, partition, values))
    if todo:
        _run_kl(todo, kl_failure or kl_warning or math.inf)
        for check, _, _ in todo:
            if check.value is not None:
                check.severity = _severity(check.value, kl_warning, kl_failure)
    return checks


def verdict(checks: list[DriftCheck]) -> str:
    severities = {c.severity for c in checks}
    if "failure" in severities:
        return "failure"
    return "warning" if severities & {"warning", "not_computed"} else "pass"


def _severity(value: float, warning: float | None, failure: float | None) -> DriftSeverity:
    if failure is not None and value > failure:
        return "failure"
    if warning is not None and value > warning:
        return "warning"
    return "ok"


def _shares(counts: dict[Any, int]) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {str(k): round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:10]}


def _expand(counts: dict[Any, int]) -> list[Any]:
    """The histogram as a column: each value repeated its count, scaled to about MAX_ROWS values."""
    total = sum(counts.values())
    scale = min(1.0, MAX_ROWS / total)
    column: list[Any] = []
    for value, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        column += [value] * max(1, round(n * scale)) if n else []
    return column


def _categorical(base: dict[Any, int], now: dict[Any, int]):
    values = sorted(set(map(str, base)) | set(map(str, now)))
    smoothed = {v: base.get(v, 0) + SMOOTHING for v in values}
    total = sum(smoothed.values())
    partition = {"values": values, "weights": [smoothed[v] / total for v in values]}
    return partition, _expand({str(k): n for k, n in now.items()}), (_shares(base), _shares(now))


def _numeric(base: dict[Any, int], now: dict[Any, int]):
    lengths = sorted(int(v) for v in base)
    low, high = lengths[0], lengths[-1] + 1
    width = max(1, math.ceil((high - low) / LENGTH_BINS))
    edges = list(range(low, high + width, width))
    counts = [0.0] * (len(edges) - 1)
    for value, n in base.items():
        counts[min((int(value) - low) // width, len(counts) - 1)] += n
    smoothed = [c + SMOOTHING for c in counts]
    total = sum(smoothed)
    partition = {"bins": edges, "weights": [c / total for c in smoothed]}

    def summary(counts: dict[Any, int]) -> dict[str, float]:
        ordered = sorted((int(k), n) for k, n in counts.items())
        rows = sum(n for _, n in ordered)
        seen, median = 0, ordered[0][0]
        for value, n in ordered:
            seen += n
            if seen * 2 >= rows:
                median = value
                break
        return {"rows": rows, "median": median, "max": ordered[-1][0]}

    return partition, _expand({int(k): n for k, n in now.items()}), (summary(base), summary(now))


class _KLOptions(TypedDict, total=False):
    tail_weight_holdout: float


def _run_kl(todo: list[tuple[DriftCheck, dict, list[Any]]], threshold: float) -> None:
    """One GX suite run per distribution (the columns differ in length); the observed divergence
    becomes the check's value, an exception its note."""
    import great_expectations as gx
    import pandas as pd

    from bonito_tasks.checks.gx import ephemeral_context, run_suite

    context = ephemeral_context()
    source = context.data_sources.add_pandas("drift")
    for i, (check, partition, values) in enumerate(todo):
        suite = context.suites.add(gx.ExpectationSuite(name=f"drift-{i}"))
        extra: _KLOptions = {"tail_weight_holdout": TAIL} if "bins" in partition else {}
        suite.add_expectation(gx.expectations.ExpectColumnKLDivergenceToBeLessThan(
            column="value", partition_object=partition, threshold=threshold, **extra,
            meta={"name": check.name, "level": "drift"}))
        try:
            result = run_suite(context, source, f"drift-{i}", suite, pd.DataFrame({"value": values}))
            outcome = result.expectations[0]
            observed = outcome.get("observed_value")
            if outcome.get("exception") or observed is None:
                check.severity, check.note = "not_computed", outcome.get("exception") or "no observed value"
            else:
                check.value = round(float(observed), 6)
        except Exception as err:  # a check GX could not run is reported, never passed
            log.warning("drift check %s could not run: %s", check.name, err)
            check.severity, check.note = "not_computed", f"{type(err).__name__}: {err}"[:300]
