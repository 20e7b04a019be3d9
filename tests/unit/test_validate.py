"""The validate stage runs the real Great Expectations suite over examples from fake generate shards."""

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
from bonito_tasks.contracts import EXAMPLES, DROPPED_GENERATIONS, RunRef
from bonito_tasks.store import LocalStore, StageWriter
from bonito_tasks.validate import (
    EXAMPLES_SUITE,
    SUITE_VERSION,
    ValidationFailed,
    example_expectations,
    validate,
)

RUN = RunRef(dag_id="d", run_id="r")


def example_rows(n: int = 3, first: int = 0) -> list[dict]:
    task_types = ["exqa", "nli", "summarization"]
    return [
        {
            "example_id": f"ex-{i}",
            "task_type": task_types[i % len(task_types)],
            "input": f"Read the passage about topic {i}. What is it about?",
            "output": f"Topic {i}.",
            "doc_id": "doc-0",
            "chunk_id": f"chunk-{i}",
            "char_start": 100 * i,
            "char_end": 100 * i + 90,
            "sample_index": 0,
            "model_id": "BatsResearch/bonito-v1",
            "model_revision": "abc123",
            "sampling_params": '{"max_tokens":256,"n":1,"temperature":0.5,"top_p":0.95}',
            "run_id": "r",
        }
        for i in range(first, first + n)
    ]


def examples_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EXAMPLES)


def commit_generate_shard(store, rows: list[dict], shard: int = 0, parse_failures: int = 0):
    writer = StageWriter(store, RUN, "generate", shard=shard)
    writer.begin()
    writer.add("examples", examples_table(rows))
    if parse_failures:
        failures = [
            {"chunk_id": f"c-{i}", "task_type": "exqa", "sample_index": 0, "reason": "no_pipe", "generated_text": ""}
            for i in range(parse_failures)
        ]
        writer.add("dropped_generations", pa.Table.from_pylist(failures, schema=DROPPED_GENERATIONS))
    return writer.commit(config_sha256="generate-config")


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def config(tmp_path):
    return RunConfig(
        source=str(tmp_path / "docs"), store=str(tmp_path / "store"), max_input_chars=200, max_output_chars=100
    )


def assert_failed_without_commit(store, err: ValidationFailed) -> dict:
    """Nothing committed, only the GX result left for the on-call; returns that result."""
    writer = StageWriter(store, RUN, "validate")
    assert writer.committed() is None
    result_key = f"{writer.prefix}/validation_result.json"
    assert store.list(writer.prefix) == [result_key]
    assert err.summary["result_uri"] == store.uri(result_key)
    assert err.summary["result_uri"] in str(err)
    result = json.loads(store.read_bytes(result_key))
    assert result["success"] is False
    return result


def test_clean_examples_pass_and_a_rerun_reuses_the_manifest(store, config):
    shards = [
        commit_generate_shard(store, example_rows(3), shard=0),
        commit_generate_shard(store, example_rows(2, first=3), shard=1),
    ]

    manifest = validate(store, RUN, config, shards)

    expected = pa.concat_tables([store.read_table(m, "examples") for m in shards])
    assert store.read_table(manifest, "examples").equals(expected)
    assert manifest.stage == "validate" and manifest.counts["examples"] == 5
    assert manifest.input_manifest_sha256 == [m.sha256 for m in shards]
    assert manifest.metrics["suite"] == {"name": EXAMPLES_SUITE, "version": SUITE_VERSION}
    assert manifest.metrics["quality"] == {"rows": 5, "pass_rate": 1.0}
    assert all(e["success"] for e in manifest.metrics["expectations"])
    suite_names = [e.meta["name"] for e in example_expectations(config)]
    assert [e["name"] for e in manifest.metrics["expectations"]] == suite_names

    assert validate(store, RUN, config, shards) == manifest


def defect(field: str, value, row: int = 1):
    def apply(rows):
        rows[row][field] = value
        return rows

    return apply


def duplicate_pair(rows):
    rows[2]["input"], rows[2]["output"] = rows[0]["input"], rows[0]["output"]
    return rows


@pytest.mark.parametrize(
    "corrupt, failed_name, column, unexpected",
    [
        (defect("output", ""), "output_length", "output", 1),
        (defect("input", "x" * 201), "input_length", "input", 1),
        (defect("output", "The answer\n<|pipe|>\nTopic 1."), "no_leftover_markup:output", "output", 1),
        (defect("input", "Read {{context}} and answer."), "no_leftover_markup:input", "input", 1),
        (duplicate_pair, "unique_input_output", "(input, output)", 2),  # both rows of the pair
        (defect("task_type", "poetry"), "known_task_type", "task_type", 1),
    ],
    ids=["empty_output", "too_long_input", "leftover_pipe", "leftover_context", "duplicate_pair", "unknown_task_type"],
)
def test_each_defect_fails_the_gate(store, config, corrupt, failed_name, column, unexpected):
    shard = commit_generate_shard(store, corrupt(example_rows(3)))

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, [shard])

    err = caught.value
    assert [f["name"] for f in err.summary["failed"]] == [failed_name]
    assert f"{failed_name} (" in str(err) and f" on {column}" in str(err)
    assert f"{unexpected} unexpected" in str(err)
    result = assert_failed_without_commit(store, err)
    failed_in_result = [r["expectation_config"]["meta"]["name"] for r in result["results"] if not r["success"]]
    assert failed_in_result == [failed_name]


def test_message_samples_are_truncated(store, config):
    shard = commit_generate_shard(store, defect("input", "y" * 5000)(example_rows(3)))

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, [shard])

    assert "expected length between 1 and 200 characters" in str(caught.value)
    assert "y" * 5000 not in str(caught.value) and "'yyy" in str(caught.value)


class ContractBreakingStore(LocalStore):
    """Serves examples as given, skipping the contract cast: a producer that breaks the schema."""

    def __init__(self, root, examples: pa.Table):
        super().__init__(root)
        self.examples = examples

    def read_table(self, manifest, table, columns=None):
        return self.examples


def test_null_column_fails_the_gate(tmp_path, config):
    rows = example_rows(3)
    rows[1]["model_revision"] = None
    nullable = pa.Table.from_pylist(rows, schema=pa.schema([f.with_nullable(True) for f in EXAMPLES]))
    store = ContractBreakingStore(tmp_path / "store", nullable)
    with pytest.raises(ValueError, match="non-nullable"):  # the store's own writes already refuse it
        StageWriter(store, RUN, "generate", shard=9).add("examples", nullable)
    shard = commit_generate_shard(store, example_rows(3))

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, [shard])

    err = caught.value
    assert [f["name"] for f in err.summary["failed"]] == ["not_null:model_revision"]
    assert "on model_revision" in str(err)
    assert_failed_without_commit(store, err)
    assert pickle.loads(pickle.dumps(err)).summary == err.summary


def test_zero_rows_fails_with_a_clear_message(store, config):
    shards = [commit_generate_shard(store, [], shard=0, parse_failures=2), commit_generate_shard(store, [], shard=1)]

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, shards)

    message = str(caught.value)
    assert "no example rows" in message
    assert "2 generate shard(s) produced 0 examples (2 generations dropped)" in message
    assert [f["name"] for f in caught.value.summary["failed"]] == ["has_rows"]
    assert_failed_without_commit(store, caught.value)


def test_expectation_names_are_unique_and_cover_every_column(config):
    names = [e.meta["name"] for e in example_expectations(config)]
    assert len(names) == len(set(names))
    assert {f"not_null:{column}" for column in EXAMPLES.names} <= set(names)


def test_import_does_not_load_great_expectations():
    code = "import sys, bonito_tasks.validate; print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(bonito_tasks.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
