"""The row suite's GX results of a run's windows and partitions, added up into one result.

A GX validation result is a JSON dict: one entry per expectation with its counts (`element_count`,
`missing_count`, `unexpected_count`, the percentages, a few sample values). Counts add up across
windows and partitions, so the run's result, the one its Data Docs show, is the sum of its parts'
with the percentages worked out again. What changes between two attempts over the same data (run
time, ids, load time) is left out, so a partition's manifest has the same fingerprint when redone.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from bonito_tasks.checks.gx import SuiteRun, summarize

SAMPLES = 20  # partial_unexpected_list, as RESULT_FORMAT asks of GX
_VOLATILE_META = ("validation_id", "checkpoint_id", "run_id", "validation_time", "batch_markers", "batch_parameters")


def failed_rows(rows: SuiteRun) -> dict[int, list[str]]:
    """Row index -> names of the row-level expectations it failed (in suite order). An expectation
    that raised becomes a contract failure (no row can be trusted). Drops the per-row index lists."""
    failed_by_row: dict[int, list[str]] = {}
    for expectation in rows.failed:
        if expectation["level"] == "row" and "unexpected_index_list" in expectation:
            for index in expectation.pop("unexpected_index_list"):
                failed_by_row.setdefault(index, []).append(expectation["name"])
        elif expectation["level"] == "row":
            expectation["level"] = "contract"
    for expectation in rows.expectations:
        expectation.pop("unexpected_index_list", None)
    return failed_by_row


def portable_result(result: dict[str, Any]) -> dict[str, Any]:
    """A GX result without what differs between attempts (times, ids, indexes into one window)."""
    result = copy.deepcopy(result)
    for key in _VOLATILE_META:
        result.get("meta", {}).pop(key, None)
    for entry in result.get("results", []):
        entry.get("expectation_config", {}).pop("id", None)
        entry.get("expectation_config", {}).get("kwargs", {}).pop("batch_id", None)
        (entry.get("result") or {}).pop("partial_unexpected_index_list", None)
    return result


def add_results(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """The result over the rows of both (either may be {}: no rows)."""
    if not total:
        return copy.deepcopy(part)
    if not part:
        return total
    theirs = {_name(e): e for e in part["results"]}
    for entry in total["results"]:
        other = theirs.get(_name(entry))
        if other is None:
            continue
        mine, more = entry.setdefault("result", {}) or {}, other.get("result") or {}
        for key in ("element_count", "missing_count", "unexpected_count"):
            if key in mine or key in more:
                mine[key] = mine.get(key, 0) + more.get(key, 0)
        if "partial_unexpected_list" in mine or "partial_unexpected_list" in more:
            mine["partial_unexpected_list"] = (mine.get("partial_unexpected_list", [])
                                               + more.get("partial_unexpected_list", []))[:SAMPLES]
        counts: Counter[Any] = Counter()  # GX's value (lists made tuples) -> count
        for source in (mine, more):
            for item in source.get("partial_unexpected_counts", []):
                counts[_hashable(item["value"])] += item["count"]
        if counts:
            mine["partial_unexpected_counts"] = [{"value": v, "count": n} for v, n in counts.most_common(SAMPLES)]
        entry["success"] = bool(entry["success"] and other["success"])
        if (other.get("exception_info") or {}).get("raised_exception"):
            entry["exception_info"] = other["exception_info"]
        _percentages(mine)
    return _restate(total)


def add_unexpected(result: dict[str, Any], name: str, rows: int, value: Any) -> dict[str, Any]:
    """`result` with `rows` more unexpected values (`value`) for the expectation `name`."""
    if not rows:
        return result
    result = copy.deepcopy(result)
    for entry in result["results"]:
        if _name(entry) == name:
            observed = entry.setdefault("result", {})
            observed["unexpected_count"] = observed.get("unexpected_count", 0) + rows
            samples = observed.get("partial_unexpected_list", [])
            observed["partial_unexpected_list"] = (samples + [value] * rows)[:SAMPLES]
            counts = Counter({_hashable(i["value"]): i["count"] for i in observed.get("partial_unexpected_counts", [])})
            counts[value] += rows
            observed["partial_unexpected_counts"] = [{"value": v, "count": n} for v, n in counts.most_common(SAMPLES)]
            entry["success"] = False
            _percentages(observed)
    return _restate(result)


def summaries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per expectation, as `run_suite` gives them, in the result's order."""
    return [summarize(entry) for entry in result.get("results", [])]


def _name(entry: dict[str, Any]) -> str:
    return entry["expectation_config"]["meta"]["name"]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _percentages(observed: dict[str, Any]) -> None:
    """GX's percentages, from the counts: unexpected of the non-missing rows, and of all rows."""
    total, missing = observed.get("element_count"), observed.get("missing_count", 0)
    if not total:
        return
    unexpected = observed.get("unexpected_count", 0)
    present = total - missing
    observed["missing_percent"] = missing / total * 100
    observed["unexpected_percent_total"] = unexpected / total * 100
    observed["unexpected_percent_nonmissing"] = unexpected / present * 100 if present else None
    observed["unexpected_percent"] = observed["unexpected_percent_nonmissing"]


def _restate(result: dict[str, Any]) -> dict[str, Any]:
    """The suite's success and statistics, from its expectations."""
    entries = result["results"]
    passed = sum(1 for e in entries if e["success"])
    result["success"] = passed == len(entries)
    result["statistics"] = {"evaluated_expectations": len(entries), "successful_expectations": passed,
                            "unsuccessful_expectations": len(entries) - passed,
                            "success_percent": passed / len(entries) * 100 if entries else None}
    return result
