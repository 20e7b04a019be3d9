"""The validate stage: gate the generated examples with the Great Expectations suites.

Rows failing a row-level expectation go to `quarantine` (with the names of the expectations they
failed); the rest go on as `examples`. Dataset-level thresholds (params) then decide the run: on
success the stage commits both tables with a manifest; on failure it commits nothing and raises
ValidationFailed naming each breached threshold, its observed value and where the Data Docs are.
Either way the Data Docs (`data_docs/index.html`), the quality report (`report/`) and the full GX
result (`validation_result.json`) are written to the stage folder.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES, Manifest, RunRef
from bonito_tasks.store import ArtifactStore, StageWriter
from bonito_tasks.validate.profile import row_profile
from bonito_tasks.validate.report import quality_report
from bonito_tasks.validate.suites import (
    CLASSIFICATION,
    DATASET_SUITE,
    EXAMPLES_SUITE,
    LABEL_SHARE_MIN_ROWS,
    SUITE_VERSION,
    build_dataset_suite,
    build_examples_suite,
    label_tasks,
    shape_tasks,
)

STAGE = "validate"
RESULT_FILE = "validation_result.json"
DOCS_DIR = "data_docs"
REPORT_DIR = "report"
# COMPLETE gives the index of every failing row (the quarantine); the stored result drops those lists.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 20, "return_unexpected_index_query": False}
_BULKY_RESULT_KEYS = ("unexpected_list", "unexpected_index_list")
MESSAGE_SAMPLES = 3
MESSAGE_SAMPLE_CHARS = 80
# Keys of an expectation's kwargs that say where it looks, not what it bounds.
_DOMAIN_KWARGS = ("batch_id", "column", "column_list")


class ValidationFailed(Exception):
    """The examples failed the gate. `summary` holds the same findings as the message, structured."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):
        return type(self), (str(self), self.summary)


@dataclass(frozen=True)
class SuiteRun:
    success: bool
    expectations: list[dict[str, Any]]  # one summary per expectation, in suite order (GX reorders them)
    result: dict[str, Any]  # the full GX validation result, JSON-ready, without per-row lists

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.expectations if not e["success"]]


@dataclass(frozen=True)
class ExamplesCheck:
    """The outcome of both suites over one examples table."""

    rows: SuiteRun
    dataset: SuiteRun | None  # None when a contract expectation failed (thresholds are moot)
    failed_by_row: dict[int, list[str]]  # row index -> names of the row-level expectations it failed
    profile: pa.Table
    docs_dir: Path | None

    @property
    def passed(self) -> np.ndarray:
        return _passed(self.profile.num_rows, self.failed_by_row)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """What fails the run: contract expectations, else breached dataset thresholds."""
        contract = [e for e in self.rows.failed if e["level"] == "contract"]
        return contract or (self.dataset.failed if self.dataset else [])

    @property
    def success(self) -> bool:
        return not self.failed


def validate(store: ArtifactStore, run: RunRef, config: RunConfig, generated: list[Manifest]) -> Manifest:
    """Validate the examples of all generate shards against the run's chunks; quarantine failing
    rows and commit the rest if the dataset thresholds hold."""
    writer = StageWriter(store, run, STAGE)
    config_sha256 = config.sha256()
    if done := writer.reusable(config_sha256, generated):
        return done
    writer.begin()

    shards = [store.read_table(m, "examples") for m in generated]
    examples = pa.concat_tables(shards) if shards else EXAMPLES.empty_table()
    summary = {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "suite": _suite_ref(),
        "rows": examples.num_rows,
        "generate_shards": len(generated),
        "dropped_generations": sum(m.rows_of("dropped_generations") for m in generated),
    }
    if examples.num_rows == 0 or (schema_errors := _schema_errors(examples.schema)):
        summary["failed"] = [] if examples.num_rows == 0 else [{"name": "schema", "problems": schema_errors}]
        raise ValidationFailed(failure_message(summary), summary)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bonito-gx-docs-") as tmp:
        check = check_examples(examples, _chunk_texts(store, run), config, docs_dir=Path(tmp))
        validation_s = time.perf_counter() - started
        docs_uri = _upload_dir(store, check.docs_dir, f"{writer.prefix}/{DOCS_DIR}", "index.html")
    passed = check.passed
    failed_names = pa.array([check.failed_by_row[i] for i in sorted(check.failed_by_row)], pa.list_(pa.string()))
    quarantine = examples.filter(pa.array(~passed)).append_column("failed_expectations", failed_names)
    result = {"rows": check.rows.result, "dataset": check.dataset.result if check.dataset else None}
    result_uri = store.write_bytes(f"{writer.prefix}/{RESULT_FILE}", json.dumps(result, indent=2, default=str).encode())
    quality, files = quality_report(check.profile, passed, check.failed_by_row, generated, label_tasks(config))
    report_uris = {name: store.write_bytes(f"{writer.prefix}/{REPORT_DIR}/{name}", data) for name, data in files.items()}
    quality |= {
        "data_docs_uri": docs_uri,
        "report_uri": report_uris.pop("quality.html"),
        "summary_uri": report_uris.pop("summary.json"),
        "plots": report_uris,
    }
    if quarantine.num_rows:
        quarantine_ref = writer.add("quarantine", quarantine)
        summary["quarantine_uri"] = store.uri(f"{writer.prefix}/{quarantine_ref.path}")

    if not check.success:
        summary |= {"failed": check.failed, "quarantined": quality["failed_expectations"],
                    "data_docs_uri": docs_uri, "result_uri": result_uri}
        raise ValidationFailed(failure_message(summary), summary)

    writer.add("examples", examples.filter(pa.array(passed)))
    return writer.commit(
        config_sha256=config_sha256,
        inputs=generated,
        counts={"examples_in": examples.num_rows},
        metrics={
            "suite": _suite_ref(),
            "expectations": check.rows.expectations + check.dataset.expectations,
            "validation_s": round(validation_s, 3),
            "quality": quality,
        },
    )


def check_examples(
    examples: pa.Table, chunks: pa.Table, config: RunConfig, docs_dir: Path | None = None
) -> ExamplesCheck:
    """Run the row suite on the examples' profile, then the dataset suite on the pass/fail outcome.
    `chunks` holds the run's (chunk_id, text). With `docs_dir`, GX Data Docs are built there."""
    profile = row_profile(examples, chunks, label_tasks(config), shape_tasks(config))
    context = _ephemeral_context(docs_dir)
    source = context.data_sources.add_pandas("bonito")
    row_suite = context.suites.add(build_examples_suite(config))
    rows = _run(context, source, "example_rows", row_suite, _pandas(profile))

    failed_by_row: dict[int, list[str]] = {}
    for expectation in rows.failed:
        if expectation["level"] == "row" and "unexpected_index_list" in expectation:
            for index in expectation.pop("unexpected_index_list"):
                failed_by_row.setdefault(index, []).append(expectation["name"])
        elif expectation["level"] == "row":  # the expectation raised: no row can be trusted
            expectation["level"] = "contract"
    for expectation in rows.expectations:
        expectation.pop("unexpected_index_list", None)
    dataset = None
    if not any(e["level"] == "contract" for e in rows.failed):
        frame, share_tasks = _dataset_frame(profile, _passed(examples.num_rows, failed_by_row))
        dataset_suite = context.suites.add(build_dataset_suite(config, share_tasks))
        dataset = _run(context, source, "dataset", dataset_suite, _pandas(frame))
    if docs_dir is not None:
        context.build_data_docs()
    return ExamplesCheck(rows=rows, dataset=dataset, failed_by_row=failed_by_row, profile=profile, docs_dir=docs_dir)


def _passed(n: int, failed_by_row: dict[int, list[str]]) -> np.ndarray:
    passed = np.ones(n, dtype=bool)
    passed[list(failed_by_row)] = False
    return passed


def _pandas(table: pa.Table):
    """Nullable booleans as pandas' boolean dtype, not object arrays (which GX scans row by row)."""
    import pandas as pd

    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def _run(context, source, asset: str, suite, frame) -> SuiteRun:
    import great_expectations as gx

    batch = source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe("all_rows")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}-v{SUITE_VERSION}", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT).to_json_dict()
    position = {e.meta["name"]: i for i, e in enumerate(suite.expectations)}
    summaries = sorted((_summarize(r) for r in result["results"]), key=lambda e: position[e["name"]])
    for r in result["results"]:
        for key in _BULKY_RESULT_KEYS:
            (r.get("result") or {}).pop(key, None)
    return SuiteRun(success=bool(result["success"]), expectations=summaries, result=result)


def _dataset_frame(profile: pa.Table, passed: np.ndarray) -> tuple[pa.Table, list[str]]:
    """passed and repeat (0/1) per row, and each row's label share within its task's passing rows."""
    n = len(passed)
    columns = {
        "passed": pa.array(passed.astype(np.int8)),
        "repeat": pa.array(profile["repeats_input_output"].to_numpy().astype(np.int8)),
    }
    share_tasks = []
    for name in profile.column_names:
        task = name.removeprefix("label__")
        if not name.startswith("label__") or task not in CLASSIFICATION:
            continue
        labels = profile[name].combine_chunks()
        rows = np.flatnonzero(pc.is_valid(labels).to_numpy(zero_copy_only=False) & passed)
        if len(rows) < LABEL_SHARE_MIN_ROWS:
            continue
        codes = pc.dictionary_encode(labels.take(rows)).indices.to_numpy(zero_copy_only=False)
        share = np.full(n, np.nan)
        share[rows] = np.bincount(codes)[codes] / len(rows)
        columns[f"label_share__{task}"] = pa.array(share, from_pandas=True)
        share_tasks.append(task)
    return pa.table(columns), share_tasks


def _chunk_texts(store: ArtifactStore, run: RunRef) -> pa.Table:
    """(chunk_id, text) of this run's chunk stage: examples are joined to their context by chunk_id."""
    writer = StageWriter(store, run, "chunk")
    manifest = writer.committed()
    if manifest is None:
        raise ValidationFailed(
            f"validate needs the chunk stage of {run.dag_id} / {run.run_id} (examples are checked against their "
            f"chunk text), but {store.uri(writer.manifest_key)} does not exist: re-run the chunk task.",
            {"dag_id": run.dag_id, "run_id": run.run_id, "failed": [{"name": "chunk_stage_missing"}]},
        )
    return store.read_table(manifest, "chunks", columns=["chunk_id", "text"])


def _upload_dir(store: ArtifactStore, local: Path, prefix: str, index: str) -> str:
    """Copy a local folder to the store (which may be S3); returns the URI of `index` in it."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.write_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return store.uri(f"{prefix}/{index}")


def _schema_errors(schema: pa.Schema) -> list[str]:
    errors = [f"missing column {f.name} ({f.type})" for f in EXAMPLES if f.name not in schema.names]
    errors += [
        f"column {f.name} is {schema.field(f.name).type}, expected {f.type}"
        for f in EXAMPLES
        if f.name in schema.names and not schema.field(f.name).type.equals(f.type)
    ]
    return errors


def _ephemeral_context(docs_dir: Path | None = None):
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


def _suite_ref() -> dict[str, str]:
    return {"name": EXAMPLES_SUITE, "dataset_suite": DATASET_SUITE, "version": SUITE_VERSION}


def _summarize(expectation_result: dict[str, Any]) -> dict[str, Any]:
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


def _describe(failure: dict[str, Any]) -> str:
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


def failure_message(summary: dict[str, Any]) -> str:
    """What the on-call reads first: what failed, by how much against which threshold, and where to look."""
    where = f"{summary['dag_id']} / {summary['run_id']}"
    if summary["rows"] == 0:
        return (
            f"validate failed for {where}: no example rows to validate. "
            f"The {summary['generate_shards']} generate shard(s) produced 0 examples "
            f"({summary['dropped_generations']} generations dropped): nothing was generated, or every "
            "generation failed to parse. Check the generate logs and the dropped_generations tables."
        )
    failed = summary["failed"]
    if failed and failed[0]["name"] == "schema":
        return f"validate failed for {where}: the examples table breaks the contract: " + "; ".join(failed[0]["problems"])
    suite = f"{summary['suite']['name']} v{summary['suite']['version']}"
    lines = [
        f"validate failed for {where}: {len(failed)} expectation(s) of suite {suite} failed on "
        f"{summary['rows']} example rows; nothing was committed and publish will not run.",
        *(_describe(f) for f in failed),
    ]
    if summary.get("quarantined"):
        counts = ", ".join(f"{name}: {count}" for name, count in summary["quarantined"].items())
        lines.append(f"Rows quarantined by expectation: {counts}")
    if summary.get("quarantine_uri"):
        lines.append(f"Quarantined rows: {summary['quarantine_uri']}")
    lines += [f"Data Docs: {summary['data_docs_uri']}", f"Full GX result: {summary['result_uri']}"]
    return "\n".join(lines)
