"""The Great Expectations harness every check uses: a throwaway context, one suite run over a
narrow profile table, and the results summarized the way a person reads them.

Stage-boundary contracts (boundaries.py) and the validate stage's gate both run through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import CheckFindings
from bonito_tasks.errors import PermanentFailure

# Importing Great Expectations logs one INFO line per function it skips registering ("Skipping registering
# function ... because it is a closure"): about 200 lines of noise in the log of every task that checks data.
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)

# COMPLETE gives the index of every failing row (the quarantine); the stored result drops those lists.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 20, "return_unexpected_index_query": False}
_BULKY_RESULT_KEYS = ("unexpected_list", "unexpected_index_list")
MESSAGE_SAMPLES = 3
MESSAGE_SAMPLE_CHARS = 80
# Keys of an expectation's kwargs that say where it looks, not what it bounds.
_DOMAIN_KWARGS = ("batch_id", "column", "column_list")


class ValidationFailed(PermanentFailure):
    """Data failed a suite (the gate or a stage contract); the same data fails the same way.
    `findings` holds the same findings as the message, structured."""

    def __init__(self, message: str, findings: CheckFindings):
        super().__init__(message)
        self.findings = findings

    def __reduce__(self):
        return type(self), (str(self), self.findings)


@dataclass(frozen=True)
class SuiteRun:
    success: bool
    expectations: list[dict[str, Any]]  # one summary per expectation, in suite order (GX reorders them)
    result: dict[str, Any]  # the full GX validation result, JSON-ready, without per-row lists

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.expectations if not e["success"]]


def to_pandas(table: pa.Table):
    """Nullable booleans as pandas' boolean dtype, not object arrays (which GX scans row by row)."""
    import pandas as pd

    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def run_suite(context, source, asset: str, suite, frame, name: str | None = None) -> SuiteRun:
    """Validate `frame` (pandas) against `suite` as the asset `asset`; `name` names the run in Data Docs."""
    import great_expectations as gx

    batch = source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe("all_rows")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name or suite.name, data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT).to_json_dict()
    position = {e.meta["name"]: i for i, e in enumerate(suite.expectations)}
    summaries = sorted((summarize(r) for r in result["results"]), key=lambda e: position[e["name"]])
    for r in result["results"]:
        for key in _BULKY_RESULT_KEYS:
            (r.get("result") or {}).pop(key, None)
    return SuiteRun(success=bool(result["success"]), expectations=summaries, result=result)


def present_probe(values: pa.Array) -> pa.Array:
    """A narrow stand-in of a column for not-null checks, null exactly where it is: the length of a
    string or list, the value itself otherwise."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.binary_length(values)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return pc.list_value_length(values)
    return values


def ephemeral_context(docs_dir: Path | None = None):
    """A throwaway GX context (stores in memory); with docs_dir, a Data Docs site on that folder."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["run"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    project_config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=project_config)


def summarize(expectation_result: dict[str, Any]) -> dict[str, Any]:
    """The part of one GX expectation result a person (or the quarantine) needs, under its name."""
    config = expectation_result["expectation_config"]
    kwargs = config["kwargs"]
    observed = expectation_result.get("result") or {}
    exception = expectation_result.get("exception_info") or {}
    summary = {
        "name": config["meta"]["name"],
        "level": config["meta"]["level"],
        "expectation": config["type"],
        "column": kwargs.get("column") or kwargs.get("column_list"),
        "success": bool(expectation_result["success"]),
        "expected": config.get("description"),
        "bound": {k: v for k, v in kwargs.items() if k not in _DOMAIN_KWARGS and v is not None},
    }
    for key in ("observed_value", "unexpected_count", "unexpected_percent"):
        if key in observed:
            value = observed[key]
            summary[key] = value.item() if hasattr(value, "item") else value  # numpy scalar -> plain
    if not summary["success"]:
        summary["sample_unexpected"] = [_clip(v) for v in observed.get("partial_unexpected_list", [])[:MESSAGE_SAMPLES]]
        if "unexpected_index_list" in observed:
            summary["unexpected_index_list"] = observed["unexpected_index_list"]
    if exception.get("raised_exception"):
        summary["exception"] = exception.get("exception_message")
    return summary


def _clip(value: Any) -> str:
    """A value as a person reads it in a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= MESSAGE_SAMPLE_CHARS else text[: MESSAGE_SAMPLE_CHARS - 3] + "..."


def describe(failure: dict[str, Any]) -> str:
    line = f"- {failure['name']} ({failure['expectation']} on {failure['column']}): "
    if "exception" in failure:
        return line + f"raised {failure['exception']}"
    if failure.get("unexpected_count") is not None:
        percent = failure.get("unexpected_percent")
        line += f"{failure['unexpected_count']} unexpected" + (f" ({percent:.2f}%)" if percent is not None else "")
    else:
        line += f"observed {failure.get('observed_value')!r}"
    bound = ", ".join(f"{k}={v}" for k, v in failure["bound"].items())
    line += f" against threshold {bound}: {failure['expected']}"
    if failure.get("sample_unexpected"):
        line += "; e.g. " + ", ".join(failure["sample_unexpected"])
    return line
