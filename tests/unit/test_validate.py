"""The validate stage runs the real Great Expectations suites over examples from fake generate and chunk stages."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import bonito_tasks
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    CHUNKS,
    DROPPED_GENERATIONS,
    EXAMPLES,
    ChunkMetrics,
    GenerateMetrics,
    Manifest,
    RunRef,
)
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from bonito_tasks.validate import EXAMPLES_SUITE, SUITE_VERSION, ValidationFailed, example_expectations, validate

RUN = RunRef(dag_id="d", run_id="r")
TASKS = ["exqa", "mcqa", "ynqa", "nli", "te", "paraphrase_id", "sentiment", "topic_class", "coref", "summarization"]


def context(i: int) -> str:
    return (f"Lease {i}: the lease runs for twelve months. "
            "The tenant pays rent of 900 euros on the first day of each month.")


def clean_row(i: int, task_type: str) -> dict:
    ctx = context(i)
    input_output = {
        "exqa": (f"{ctx}\nHow long does the lease run?", "twelve months"),
        "mcqa": (f"{ctx}\nWhat is the rent?\nOptions:\n- 900 euros\n- 500 euros", "900 euros"),
        "ynqa": (f"{ctx}\nIs the rent paid every month?", "Yes."),
        "nli": (f"Premise: {ctx}\nHypothesis: rent is paid yearly. True, false or neither?", "False"),
        "te": (f"{ctx}\nDoes it follow that the lease is monthly? yes or no", "no"),
        "paraphrase_id": (f"Is '{ctx}' a paraphrase of 'Rent is 900 euros a month'?", "yes"),
        "sentiment": (f"{ctx}\nIs the tone positive, negative or neutral?", "neutral"),
        "topic_class": (f"{ctx}\nWhat is the topic?", "real estate"),
        "coref": (f"{ctx}\nWho pays the rent?", "the tenant"),
        "summarization": (f"Summarize: {ctx}", "A twelve-month lease at 900 euros a month."),
    }[task_type]
    return {
        "example_id": f"ex-{i}",
        "task_type": task_type,
        "input": input_output[0],
        "output": input_output[1],
        "doc_id": "doc-0",
        "chunk_id": f"chunk-{i}",
        "char_start": 200 * i,
        "char_end": 200 * i + len(ctx),
        "sample_index": 0,
        "model_id": "BatsResearch/bonito-v1",
        "model_revision": "abc123",
        "sampling_params": '{"max_tokens":256,"n":1,"temperature":0.5,"top_p":0.95}',
        "run_id": "r",
    }


def clean_rows(n: int, first: int = 0, tasks: list[str] = TASKS) -> list[dict]:
    return [clean_row(i, tasks[i % len(tasks)]) for i in range(first, first + n)]


def commit_chunks(store, n: int) -> Manifest:
    writer = StageWriter(store, RUN, "chunk")
    writer.begin()
    rows = [{"chunk_id": f"chunk-{i}", "doc_id": "doc-0", "chunk_index": i, "char_start": 200 * i,
             "char_end": 200 * i + len(context(i)), "n_tokens": 30, "text": context(i), "also_in": []}
            for i in range(n)]
    writer.add("chunks", pa.Table.from_pylist(rows, CHUNKS))
    return writer.commit(metrics=ChunkMetrics(chunks=n))


def chunk_stage(store) -> Manifest:
    return StageWriter(store, RUN, "chunk").committed()


def commit_generate_shard(store, rows: list[dict], shard: int = 0, parse_failures: int = 0):
    writer = StageWriter(store, RUN, "generate", partition=shard)
    writer.begin()
    writer.add("examples", pa.Table.from_pylist(rows, schema=EXAMPLES))
    if parse_failures:
        failures = [
            {"chunk_id": f"c-{i}", "task_type": "exqa", "sample_index": 0, "reason": "no_pipe", "generated_text": ""}
            for i in range(parse_failures)
        ]
        writer.add("dropped_generations", pa.Table.from_pylist(failures, schema=DROPPED_GENERATIONS))
    metrics = GenerateMetrics(parse_failures={"no_pipe": parse_failures} if parse_failures else {})
    return writer.commit(metrics=metrics)


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "store")
    commit_chunks(store, 200)
    return store


def run_config(tmp_path, **overrides) -> RunConfig:
    values = dict(source=str(tmp_path / "docs"), store=str(tmp_path / "store"), task_types=TASKS,
                  max_input_tokens=200, max_output_tokens=100)
    return RunConfig(**(values | overrides))


def test_clean_examples_pass_with_docs_and_report_and_a_rerun_reuses_the_manifest(store, tmp_path):
    config = run_config(tmp_path)
    shards = [
        commit_generate_shard(store, clean_rows(30), shard=0, parse_failures=2),
        commit_generate_shard(store, clean_rows(20, first=30), shard=1),
    ]

    manifest = validate(store, RUN, config, shards, chunk_stage(store))

    expected = pa.concat_tables([store.read_table(m, "examples") for m in shards])
    assert store.read_table(manifest, "examples").equals(expected)
    assert manifest.counts == {"examples": 50} and manifest.metrics.examples_in == 50
    partitions = [StageWriter(store, RUN, "validate", partition=i).committed() for i in range(2)]
    assert manifest.input_manifest_sha256 == [p.content_sha256 for p in partitions]  # the reduce reads those
    assert [p.input_manifest_sha256 for p in partitions] == [[m.content_sha256, chunk_stage(store).content_sha256]
                                                             for m in shards]
    assert manifest.metrics.suite.name == EXAMPLES_SUITE and manifest.metrics.suite.version == SUITE_VERSION
    assert all(e.success for e in manifest.metrics.expectations)
    names = [e.name for e in manifest.metrics.expectations]
    assert names[: len(example_expectations(config))] == [e.meta["name"] for e in example_expectations(config)]
    assert {"min_pass_rate", "min_rows", "max_duplicate_rate"} <= set(names)

    quality = manifest.metrics.quality
    assert (quality.rows, quality.passed, quality.quarantined, quality.pass_rate) == (50, 50, 0, 1.0)
    assert quality.parse_failures == {"no_pipe": 2} and quality.dropped_generations == 2
    assert quality.labels["ynqa"] == {"yes": 5} and set(quality.output_tokens) == set(TASKS)
    for uri in [quality.data_docs_uri, quality.report_uri, quality.summary_uri, *quality.plots.values()]:
        assert Path(uri).is_file(), uri
    assert set(quality.plots) == {"output_tokens.svg", "labels.svg", "failures.svg"}
    assert "<svg" in Path(quality.report_uri).read_text()
    assert json.loads(Path(quality.summary_uri).read_text())["pass_rate"] == 1.0
    docs = Path(quality.data_docs_uri).parent
    assert any(p.name.endswith(".html") for p in (docs / "validations").rglob("*"))

    assert validate(store, RUN, config, shards, chunk_stage(store)) == manifest


def defect(name: str, kind: str, **changes):
    return name, kind, changes


LONG = "and so on " * 10
DEFECTS = [
    defect("output_length", "summarization", output=""),
    defect("input_length", "summarization", input=f"Summarize: {{ctx}} {'x' * 900}"),
    defect("no_leftover_markup:input", "summarization", input="Summarize {{context}}: {ctx}"),
    defect("no_leftover_markup:output", "summarization", output="A lease.\n<|pipe|>\nA lease."),
    defect("requested_task_type", "summarization", task_type="qg"),
    defect("known_chunk", "summarization", chunk_id="no-such-chunk"),
    defect("instruction_not_context_copy", "summarization", input="{ctx}"),
    defect("exqa_answer_in_context", "exqa", output="fourteen years"),
    defect("mcqa_answer_in_options", "mcqa", output="700 euros"),
    defect("ynqa_label", "ynqa", output="maybe"),
    defect("nli_label", "nli", output="perhaps"),
    defect("te_label", "te", output="perhaps"),
    defect("paraphrase_id_label", "paraphrase_id", output="perhaps"),
    defect("sentiment_label_shape", "sentiment", output="neutral " + LONG),
    defect("topic_class_label_shape", "topic_class", output="real estate " + LONG),
    defect("coref_label_shape", "coref", output="the tenant " + LONG * 3),
]


def test_each_defect_quarantines_exactly_its_row(store, tmp_path):
    config = run_config(tmp_path, min_pass_rate=0.5)
    rows = clean_rows(60)
    expected = {}
    for k, (name, task_type, changes) in enumerate(DEFECTS):
        row = clean_row(100 + k, task_type)
        row.update({key: value.replace("{ctx}", context(100 + k)) if isinstance(value, str) else value
                    for key, value in changes.items()})
        rows.append(row)
        expected[row["example_id"]] = [name]
    repeat = dict(clean_row(150, "summarization"), input=rows[9]["input"], output=rows[9]["output"])
    rows.append(repeat)  # the second occurrence of a pair is quarantined, the first goes on
    expected[repeat["example_id"]] = ["unique_input_output"]

    manifest = validate(store, RUN, config, [commit_generate_shard(store, rows)], chunk_stage(store))

    quarantine = store.read_table(manifest, "quarantine").to_pylist()
    assert {r["example_id"]: r["failed_expectations"] for r in quarantine} == expected
    passed = store.read_table(manifest, "examples")["example_id"].to_pylist()
    assert passed == [r["example_id"] for r in rows if r["example_id"] not in expected]
    row_level = {e.meta["name"] for e in example_expectations(config) if e.meta["level"] == "row"}
    assert row_level == {name for names in expected.values() for name in names}, "every check has a defect"
    quality = manifest.metrics.quality
    assert quality.quarantined == len(expected) and quality.failed_expectations["ynqa_label"] == 1


def assert_failed_without_commit(store, err: ValidationFailed) -> None:
    writer = StageWriter(store, RUN, "validate")
    assert writer.committed() is None
    assert Path(err.findings.data_docs_uri).is_file() and err.findings.data_docs_uri in str(err)
    assert json.loads(Path(err.findings.result_uri).read_text())["dataset"]["success"] is False


def test_below_the_pass_rate_the_run_fails_and_commits_nothing(store, tmp_path):
    rows = clean_rows(20, tasks=["summarization"])
    for row in rows[:4]:
        row["output"] = ""
    shard = commit_generate_shard(store, rows)

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, run_config(tmp_path), [shard], chunk_stage(store))

    err = caught.value
    message = str(err)
    assert [f["name"] for f in err.findings.failed] == ["min_pass_rate"]
    assert ("min_pass_rate (expect_column_mean_to_be_between on passed): "
            "observed 0.8 against threshold min_value=0.9") in message
    assert "Rows quarantined by expectation: output_length: 4" in message and "publish will not run" in message
    assert_failed_without_commit(store, err)
    assert pickle.loads(pickle.dumps(err)).findings == err.findings


def test_duplicate_rate_min_rows_and_label_share_thresholds(store, tmp_path):
    rows = clean_rows(30, tasks=["ynqa"])  # every answer is "yes"
    rows[1].update(input=rows[0]["input"], output=rows[0]["output"])
    shard = commit_generate_shard(store, rows)
    config = run_config(tmp_path, task_types=["ynqa"], min_pass_rate=0.5, min_rows=100, max_duplicate_rate=0.01)

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, [shard], chunk_stage(store))

    failed = {f["name"]: f for f in caught.value.findings.failed}
    assert set(failed) == {"min_rows", "max_duplicate_rate", "max_label_share:ynqa"}
    assert failed["min_rows"]["observed_value"] == 29
    assert failed["max_label_share:ynqa"]["observed_value"] == 1.0
    assert ("max_label_share:ynqa (expect_column_max_to_be_between on label_share__ynqa): "
            "observed 1.0") in str(caught.value)


class ContractBreakingStore(LocalStore):
    """Serves examples as given, skipping the contract cast: a producer that breaks the schema."""

    def __init__(self, root, examples: pa.Table):
        super().__init__(root)
        self.examples = examples

    def read_shard(self, manifest, table, index, columns=None):
        if table == "examples" and manifest.stage == "generate":
            return self.examples.select(columns) if columns else self.examples
        return super().read_shard(manifest, table, index, columns)


def test_a_null_breaks_the_contract_and_fails_the_run(tmp_path):
    rows = clean_rows(3)
    rows[1]["model_revision"] = None
    nullable = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in EXAMPLES]))
    store = ContractBreakingStore(tmp_path / "store", nullable)
    commit_chunks(store, 3)
    shard = commit_generate_shard(store, clean_rows(3))

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, run_config(tmp_path), [shard], chunk_stage(store))

    assert [f["name"] for f in caught.value.findings.failed] == ["not_null:model_revision"]
    assert "on model_revision__present" in str(caught.value)
    assert StageWriter(store, RUN, "validate").committed() is None


def test_a_schema_break_is_named(tmp_path):
    table = pa.Table.from_pylist(clean_rows(3), schema=EXAMPLES)
    table = table.set_column(table.schema.get_field_index("sample_index"), "sample_index",
                             table["sample_index"].cast(pa.int64()))
    store = ContractBreakingStore(tmp_path / "store", table.drop_columns(["run_id"]))
    commit_chunks(store, 3)

    with pytest.raises(ValidationFailed, match="breaks the contract: missing column run_id \\(string\\); "
                                               "column sample_index is int64, expected int32"):
        validate(store, RUN, run_config(tmp_path), [commit_generate_shard(store, clean_rows(3))], chunk_stage(store))


def test_zero_rows_fails_with_a_clear_message(store, tmp_path):
    shards = [commit_generate_shard(store, [], shard=0, parse_failures=2), commit_generate_shard(store, [], shard=1)]

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, run_config(tmp_path), shards, chunk_stage(store))

    assert "2 generate shard(s) produced 0 examples (2 generations dropped)" in str(caught.value)
    assert StageWriter(store, RUN, "validate").committed() is None


def test_the_chunks_are_an_input_of_validate(store, tmp_path):
    """Validate is handed the chunk manifest and hashes it: new chunks redo the row checks."""
    config = run_config(tmp_path)
    shard = commit_generate_shard(store, clean_rows(10))
    before = chunk_stage(store).content_sha256
    first = validate(store, RUN, config, [shard], chunk_stage(store))
    assert validate(store, RUN, config, [shard], chunk_stage(store)) == first
    rechunked = commit_chunks(store, 100)
    again = validate(store, RUN, config, [shard], rechunked)
    partition = StageWriter(store, RUN, "validate", partition=0).committed()
    assert partition.input_manifest_sha256[-1] == rechunked.content_sha256 != before
    # The partition redid its checks against the new chunks; the same outcome keeps the reduce's manifest.
    assert again.input_manifest_sha256 == [partition.content_sha256] == first.input_manifest_sha256


def test_expectation_names_are_unique_and_cover_every_column(tmp_path):
    names = [e.meta["name"] for e in example_expectations(run_config(tmp_path))]
    assert len(names) == len(set(names))
    assert {f"not_null:{column}" for column in EXAMPLES.names} <= set(names)


def test_import_does_not_load_great_expectations():
    code = "import sys, bonito_tasks.validate; print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(bonito_tasks.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# A source passage that itself documents Bonito's format: the markers in it are the document's own.
MARKUP_PASSAGE = ("Prompt templates: write {{context}} where the passage goes and <|pipe|> between the instruction "
                  "and the answer. A template without the pipe is rejected by the parser.")


def commit_markup_chunk(store) -> Manifest:
    writer = StageWriter(store, RUN, "chunk")
    writer.begin()
    row = {"chunk_id": "chunk-markup", "doc_id": "doc-1", "chunk_index": 0, "char_start": 0,
           "char_end": len(MARKUP_PASSAGE), "n_tokens": 40, "text": MARKUP_PASSAGE, "also_in": []}
    writer.add("chunks", pa.Table.from_pylist([row], CHUNKS))
    return writer.commit(metrics=ChunkMetrics(chunks=1))


def test_markup_in_the_chunk_text_passes_markup_in_the_generated_text_is_quarantined(tmp_path):
    store = LocalStore(tmp_path / "store")
    chunks = commit_markup_chunk(store)

    def row(i: int, task_type: str, input: str, output: str) -> dict:
        return dict(clean_row(i, task_type), chunk_id="chunk-markup", input=input, output=output)

    rows = [
        row(0, "summarization", f"Summarize this passage:\n{MARKUP_PASSAGE}", "How prompt templates are written."),
        row(1, "summarization", f"{MARKUP_PASSAGE}\nWhat does this text say? Quote it.", f"It says: {MARKUP_PASSAGE}"),
        row(2, "summarization", f"Summarize this passage:\n{MARKUP_PASSAGE}\n<|task|>", "Templates."),
        row(3, "summarization", f"Summarize {{{{context}}}}:\n{MARKUP_PASSAGE}", "Templates."),
        row(4, "summarization", f"Summarize this passage briefly:\n{MARKUP_PASSAGE}", "Templates.\n<|pipe|>\nmore"),
    ]
    config = run_config(tmp_path, task_types=["summarization"], min_pass_rate=0.2)

    manifest = validate(store, RUN, config, [commit_generate_shard(store, rows)], chunks)

    quarantine = store.read_table(manifest, "quarantine").to_pylist()
    assert {r["example_id"]: r["failed_expectations"] for r in quarantine} == {
        "ex-2": ["no_leftover_markup:input"],
        "ex-3": ["no_leftover_markup:input"],
        "ex-4": ["no_leftover_markup:output"],
    }
    assert store.read_table(manifest, "examples")["example_id"].to_pylist() == ["ex-0", "ex-1"]
