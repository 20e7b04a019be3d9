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

from bonito_tasks.checks.data_docs import make_offline
from bonito_tasks.checks.gx import (
    SuiteRun,
    ValidationFailed,
    describe,
    ephemeral_context,
    run_suite,
    to_pandas,
)
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    EXAMPLES,
    CheckFindings,
    ExpectationOutcome,
    Manifest,
    RunRef,
    StageName,
    SuiteRef,
    ValidateMetrics,
)
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore
from bonito_tasks.tokens import count_tokens, tokenizer_name
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

SUITE = SuiteRef(name=EXAMPLES_SUITE, dataset_suite=DATASET_SUITE, version=SUITE_VERSION)
RESULT_FILE = "validation_result.json"
DOCS_DIR = "data_docs"
REPORT_DIR = "report"


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


class Validate(Stage):
    """Validate the examples of all generate shards against the chunks they came from; quarantine
    failing rows and commit the rest if the dataset thresholds hold."""

    name = StageName.VALIDATE
    reads = (StageName.GENERATE, StageName.CHUNK)
    config_fields = frozenset({"task_types", "min_output_tokens", "max_input_tokens", "max_output_tokens",
                               "min_pass_rate", "min_rows", "max_duplicate_rate", "max_label_share",
                               "model_id", "model_revision"})  # the report's lengths: the model's tokens

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, generated: list[Manifest],
                 chunks: Manifest):
        super().__init__(store, run, config, [*generated, chunks])
        self.generated, self.chunks = generated, chunks

    def work(self, writer: StageWriter) -> ValidateMetrics:
        store, run, config, generated = self.store, self.run, self.config, self.generated
        shards = [store.read_table(m, "examples") for m in generated]
        examples = pa.concat_tables(shards) if shards else EXAMPLES.empty_table()
        findings = CheckFindings(
            dag_id=run.dag_id, run_id=run.run_id, suite=SUITE.name, suite_version=SUITE.version,
            rows=examples.num_rows, generate_shards=len(generated),
            dropped_generations=sum(m.rows_of("dropped_generations") for m in generated),
        )
        if examples.num_rows == 0 or (schema_errors := _schema_errors(examples.schema)):
            findings.schema_problems = schema_errors if examples.num_rows else []
            raise ValidationFailed(failure_message(findings), findings)

        started = time.perf_counter()
        chunk_texts = store.read_table(self.chunks, "chunks", columns=["chunk_id", "text"])
        with tempfile.TemporaryDirectory(prefix="bonito-gx-docs-") as tmp:
            check = check_examples(examples, chunk_texts, config, docs_dir=Path(tmp))
            validation_s = time.perf_counter() - started
            assert check.docs_dir is not None  # asked for above
            docs_uri = _upload_dir(store, check.docs_dir, f"{writer.prefix}/{DOCS_DIR}", "index.html")
        passed = check.passed
        failed_names = pa.array([check.failed_by_row[i] for i in sorted(check.failed_by_row)], pa.list_(pa.string()))
        quarantine = examples.filter(pa.array(~passed)).append_column("failed_expectations", failed_names)
        result = {"rows": check.rows.result, "dataset": check.dataset.result if check.dataset else None}
        result_uri = store.write_bytes(f"{writer.prefix}/{RESULT_FILE}",
                                       json.dumps(result, indent=2, default=str).encode())
        quality, files = quality_report(check.profile, passed, check.failed_by_row, generated, label_tasks(config),
                                        output_tokens=count_tokens(config, examples["output"]),
                                        tokenizer=tokenizer_name(config))
        report_uris = {name: store.write_bytes(f"{writer.prefix}/{REPORT_DIR}/{name}", data)
                       for name, data in files.items()}
        quality = quality.model_copy(update={
            "data_docs_uri": docs_uri,
            "report_uri": report_uris.pop("quality.html"),
            "summary_uri": report_uris.pop("summary.json"),
            "plots": report_uris,
        })
        if quarantine.num_rows:
            quarantine_ref = writer.add("quarantine", quarantine)
            findings.quarantine_uri = store.uri(f"{writer.prefix}/{quarantine_ref.path}")

        if not check.success:
            findings = findings.model_copy(update={"failed": check.failed, "quarantined": quality.failed_expectations,
                                                   "data_docs_uri": docs_uri, "result_uri": result_uri})
            raise ValidationFailed(failure_message(findings), findings)
        assert check.dataset is not None  # no contract expectation failed, so the dataset suite ran

        writer.add("examples", examples.filter(pa.array(passed)))
        return ValidateMetrics(
            examples_in=examples.num_rows,
            passed=quality.passed,
            quarantined=quality.quarantined,
            suite=SUITE,
            expectations=[ExpectationOutcome(**e) for e in check.rows.expectations + check.dataset.expectations],
            validation_s=round(validation_s, 3),
            quality=quality,
        )



def validate(
    store: ArtifactStore, run: RunRef, config: RunConfig, generated: list[Manifest], chunks: Manifest
) -> Manifest:
    return Validate(store, run, config, generated, chunks).execute()


def check_examples(
    examples: pa.Table, chunks: pa.Table, config: RunConfig, docs_dir: Path | None = None
) -> ExamplesCheck:
    """Run the row suite on the examples' profile, then the dataset suite on the pass/fail outcome.
    `chunks` holds the run's (chunk_id, text). With `docs_dir`, GX Data Docs are built there."""
    profile = row_profile(examples, chunks, label_tasks(config), shape_tasks(config))
    context = ephemeral_context(docs_dir)
    source = context.data_sources.add_pandas("bonito")
    row_suite = context.suites.add(build_examples_suite(config))
    rows = run_suite(context, source, "example_rows", row_suite, to_pandas(profile), name=_definition(row_suite))

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
        dataset = run_suite(context, source, "dataset", dataset_suite, to_pandas(frame),
                            name=_definition(dataset_suite))
    if docs_dir is not None:
        context.build_data_docs()
        make_offline(docs_dir, [rows.result, dataset.result if dataset else None])
    return ExamplesCheck(rows=rows, dataset=dataset, failed_by_row=failed_by_row, profile=profile, docs_dir=docs_dir)


def _passed(n: int, failed_by_row: dict[int, list[str]]) -> np.ndarray:
    passed = np.ones(n, dtype=bool)
    passed[list(failed_by_row)] = False
    return passed


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


def _definition(suite) -> str:
    return f"{suite.name}-v{SUITE_VERSION}"


def failure_message(findings: CheckFindings) -> str:
    """What the on-call reads first: what failed, by how much against which threshold, and where to look."""
    where = f"{findings.dag_id} / {findings.run_id}"
    if findings.rows == 0:
        return (
            f"validate failed for {where}: no example rows to validate. "
            f"The {findings.generate_shards} generate shard(s) produced 0 examples "
            f"({findings.dropped_generations} generations dropped): nothing was generated, or every "
            "generation failed to parse. Check the generate logs and the dropped_generations tables."
        )
    if findings.schema_problems:
        problems = "; ".join(findings.schema_problems)
        return f"validate failed for {where}: the examples table breaks the contract: {problems}"
    failed = findings.failed
    lines = [
        f"validate failed for {where}: {len(failed)} expectation(s) of suite {findings.suite} "
        f"v{findings.suite_version} failed on {findings.rows} example rows; nothing was committed and publish "
        "will not run.",
        *(describe(f) for f in failed),
    ]
    if findings.quarantined:
        counts = ", ".join(f"{name}: {count}" for name, count in findings.quarantined.items())
        lines.append(f"Rows quarantined by expectation: {counts}")
    if findings.quarantine_uri:
        lines.append(f"Quarantined rows: {findings.quarantine_uri}")
    lines += [f"Data Docs: {findings.data_docs_uri}", f"Full GX result: {findings.result_uri}"]
    return "\n".join(lines)
