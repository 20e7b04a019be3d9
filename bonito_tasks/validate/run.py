"""The validate stage: gate the generated examples with the Great Expectations suite.

Success commits the validated examples with a manifest. Failure commits nothing: it leaves the
full GX result in `<stage>/validation_result.json` and raises ValidationFailed with a summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES, Manifest, RunRef
from bonito_tasks.store import ArtifactStore, StageWriter
from bonito_tasks.validate.suites import EXAMPLES_SUITE, SUITE_VERSION, build_examples_suite

STAGE = "validate"
RESULT_FILE = "validation_result.json"
# SUMMARY keeps counts and the first unexpected values, not every failing row.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
MESSAGE_SAMPLES = 3
MESSAGE_SAMPLE_CHARS = 80
# Keys of an expectation's kwargs that say where it looks, not what it bounds.
_DOMAIN_KWARGS = ("batch_id", "column", "column_list")


class ValidationFailed(Exception):
    """The examples failed the suite. `summary` holds the same findings as the message, structured."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):
        return type(self), (str(self), self.summary)


@dataclass(frozen=True)
class SuiteRun:
    success: bool
    expectations: list[dict[str, Any]]  # one summary per expectation, in suite order (GX reorders them)
    result: dict[str, Any]  # the full GX validation result, JSON-ready

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.expectations if not e["success"]]


def validate(store: ArtifactStore, run: RunRef, config: RunConfig, generated: list[Manifest]) -> Manifest:
    """Validate the examples of all generate shards; commit them if every expectation passes."""
    writer = StageWriter(store, run, STAGE)
    config_sha256 = config.sha256()
    if done := writer.reusable(config_sha256, generated):
        return done
    writer.begin()

    shards = [store.read_table(m, "examples") for m in generated]
    examples = pa.concat_tables(shards) if shards else EXAMPLES.empty_table()
    outcome = run_suite(examples, config)
    if not outcome.success:
        result_uri = store.write_bytes(
            f"{writer.prefix}/{RESULT_FILE}", json.dumps(outcome.result, indent=2, default=str).encode()
        )
        summary = {
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "suite": _suite_ref(),
            "rows": examples.num_rows,
            "generate_shards": len(generated),
            "dropped_generations": sum(m.rows_of("dropped_generations") for m in generated),
            "failed": outcome.failed,
            "result_uri": result_uri,
        }
        raise ValidationFailed(failure_message(summary), summary)

    writer.add("examples", examples)
    return writer.commit(
        config_sha256=config_sha256,
        inputs=generated,
        counts={"examples_in": examples.num_rows},
        metrics={
            "suite": _suite_ref(),
            "expectations": outcome.expectations,
            # The gate commits only when every row passed; quarantine will make this < 1.
            "quality": {"rows": examples.num_rows, "pass_rate": 1.0},
        },
    )


def run_suite(examples: pa.Table, config: RunConfig) -> SuiteRun:
    """Run the examples suite over a table in a throwaway (in-memory) GX context."""
    import great_expectations as gx

    context = _ephemeral_context()
    batch_definition = (
        context.data_sources.add_pandas("generated")
        .add_dataframe_asset("examples")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(build_examples_suite(config))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{EXAMPLES_SUITE}-v{SUITE_VERSION}", data=batch_definition, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": examples.to_pandas()}, result_format=RESULT_FORMAT
    ).to_json_dict()
    position = {e.meta["name"]: i for i, e in enumerate(suite.expectations)}
    summaries = sorted((_summarize(r) for r in result["results"]), key=lambda e: position[e["name"]])
    return SuiteRun(success=bool(result["success"]), expectations=summaries, result=result)


def _ephemeral_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    project_config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=project_config)


def _suite_ref() -> dict[str, str]:
    return {"name": EXAMPLES_SUITE, "version": SUITE_VERSION}


def _summarize(expectation_result: dict[str, Any]) -> dict[str, Any]:
    """The part of one GX expectation result a person (or the quarantine) needs, under its name."""
    config = expectation_result["expectation_config"]
    kwargs = config["kwargs"]
    observed = expectation_result.get("result") or {}
    exception = expectation_result.get("exception_info") or {}
    summary = {
        "name": config["meta"]["name"],
        "expectation": config["type"],
        "column": kwargs.get("column") or kwargs.get("column_list"),
        "success": bool(expectation_result["success"]),
        "expected": config.get("description"),
        "bound": {k: v for k, v in kwargs.items() if k not in _DOMAIN_KWARGS},
    }
    for key in ("observed_value", "unexpected_count", "unexpected_percent"):
        if key in observed:
            summary[key] = observed[key]
    if not summary["success"]:
        summary["sample_unexpected"] = [_clip(v) for v in observed.get("partial_unexpected_list", [])[:MESSAGE_SAMPLES]]
    if exception.get("raised_exception"):
        summary["exception"] = exception.get("exception_message")
    return summary


def _clip(value: Any) -> str:
    """A value as a person reads it in a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= MESSAGE_SAMPLE_CHARS else text[: MESSAGE_SAMPLE_CHARS - 3] + "..."


def _where(column: str | list[str] | None) -> str:
    if not column:
        return ""
    return f" on ({', '.join(column)})" if isinstance(column, list) else f" on {column}"


def _describe(failure: dict[str, Any]) -> str:
    line = f"- {failure['name']} ({failure['expectation']}{_where(failure['column'])}): "
    if "exception" in failure:
        return line + f"raised {failure['exception']}"
    if failure.get("unexpected_count") is not None:
        percent = failure.get("unexpected_percent")
        line += f"{failure['unexpected_count']} unexpected" + (f" ({percent:.2f}%)" if percent is not None else "")
    else:
        line += f"observed {failure.get('observed_value')!r}"
    line += f"; expected {failure['expected'] or failure['bound']}"
    if failure.get("sample_unexpected"):
        line += "; e.g. " + ", ".join(failure["sample_unexpected"])
    return line


def failure_message(summary: dict[str, Any]) -> str:
    """What the on-call reads first: what failed, where, by how much, and where the full result is."""
    suite = f"{summary['suite']['name']} v{summary['suite']['version']}"
    if summary["rows"] == 0:
        headline = (
            f"validate failed for {summary['dag_id']} / {summary['run_id']}: no example rows to validate. "
            f"The {summary['generate_shards']} generate shard(s) produced 0 examples "
            f"({summary['dropped_generations']} generations dropped): nothing was generated, or every "
            "generation failed to parse. Check the generate logs and the dropped_generations tables."
        )
        return f"{headline}\nFull GX result: {summary['result_uri']}"
    failed = summary["failed"]
    headline = (
        f"validate failed for {summary['dag_id']} / {summary['run_id']}: {len(failed)} expectation(s) "
        f"of suite {suite} failed on {summary['rows']} example rows; nothing was committed."
    )
    return "\n".join([headline, *(_describe(f) for f in failed), f"Full GX result: {summary['result_uri']}"])
