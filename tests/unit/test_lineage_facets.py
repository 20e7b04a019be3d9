"""OpenLineage facets that match the data (plugins/bonito_airflow/lineage.py), without a DAG run
(tests/e2e/test_lineage.py checks the events of a real run against the spec): every dataset name is
a file or a pattern of files that is on disk, every column an assertion names is in the schema
facet of the dataset it is on, the published dataset carries a schema and output statistics
wherever it went, and the Hub dataset is named by its URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_validate import RUN, chunk_stage, clean_rows, commit_chunks, commit_generate_shard, run_config

from bonito_tasks.contracts import EXAMPLES, ExpectationOutcome, PublishedFile, PublishMetrics
from bonito_tasks.store import LocalStore
from bonito_tasks.task_types import TASK_TYPES
from bonito_tasks.validate import validate

pytestmark = pytest.mark.airflow


def test_table_names_are_the_files_or_the_pattern_of_their_parts():
    from bonito_airflow.lineage import table_name

    assert table_name("/s/r/validate", "examples", ["part-00000.examples.parquet"]) == (
        "/s/r/validate/part-00000.examples.parquet")
    parts = ["shard-00000/part-00000.examples.parquet", "shard-00001/part-00000.examples.parquet"]
    assert table_name("/s/r/generate", "examples", parts) == "/s/r/generate/shard-*/part-*.examples.parquet"
    assert table_name("/s/r/validate", "quarantine", []) is None


def test_stage_datasets_name_what_is_on_disk(tmp_path):
    from bonito_airflow.lineage import table_datasets

    store = LocalStore(tmp_path / "store")
    commit_chunks(store, 40)
    shards = [commit_generate_shard(store, clean_rows(10), shard=0), commit_generate_shard(store, clean_rows(10, 10),
                                                                                          shard=1)]
    manifest = validate(store, RUN, run_config(tmp_path), shards, chunk_stage(store))  # nothing quarantined
    for stage in [manifest, chunk_stage(store), *shards]:
        for dataset in table_datasets(stage, output=True):
            assert dataset.namespace == "file"
            assert list(Path("/").glob(dataset.name.lstrip("/"))), dataset.name
            table = dataset.name.rsplit(".", 2)[-2]
            assert dataset.outputFacets["outputStatistics"].rowCount == stage.counts[table]
    # validate's examples are its partitions' parts, one partition per generate shard
    assert {d.name.split("/validate/", 1)[1] for d in table_datasets(manifest, output=True)} == {
        "shard-*/part-*.examples.parquet"}


def test_every_column_an_assertion_names_is_in_the_examples_schema(tmp_path):
    """Every check of both suites, for every task type: the examples columns the checks are computed from."""
    from bonito_airflow.lineage import assertions, examples_column
    from bonito_tasks.validate.suites import dataset_expectations, example_expectations

    config = run_config(tmp_path, task_types=list(TASK_TYPES))
    expectations = [*example_expectations(config), *dataset_expectations(config, list(TASK_TYPES))]
    outcomes = [ExpectationOutcome(name=e.meta["name"], level=e.meta["level"], expectation=e.expectation_type,
                                   column=e.column, success=True, expected=e.description, bound={})
                for e in expectations]
    facet = assertions(outcomes)
    assert len(facet.assertions) == len(expectations)
    named = {a.column for a in facet.assertions if a.column is not None}
    assert named <= set(EXAMPLES.names) and {"output", "input", "task_type", "chunk_id"} <= named
    by_name = {a.name: a for a in facet.assertions}
    assert by_name["output_length"].column == "output"
    assert by_name["output_length"].params["profile_column"] == "output_tokens"
    assert by_name["min_pass_rate"].column is None  # a threshold over the whole table
    assert examples_column("label__ynqa") == "output" and examples_column("model_id__present") == "model_id"


def test_the_published_dataset_has_schema_and_statistics_wherever_it_went(monkeypatch):
    from bonito_airflow.lineage import published_datasets
    from bonito_tasks.publish.layout import PUBLISHED

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    metrics = PublishMetrics(dataset_uri="/s/bonito_dataset/r/publish/dataset", publish_mode="overwrite", examples=42,
                             export_uri="s3://exports/contracts",
                             files={"data/exqa/train-0.parquet": PublishedFile(bytes=1000, sha256="a"),
                                    "README.md": PublishedFile(bytes=200, sha256="b")})

    datasets = published_datasets("bonito_dataset", metrics, "acme/contracts-qa")

    assert [(d.namespace, d.name) for d in datasets] == [
        ("file", "/s/bonito_dataset/r/publish/dataset"), ("https://huggingface.co", "datasets/acme/contracts-qa"),
        ("s3://exports", "contracts")]
    for dataset in datasets:
        assert [f.name for f in dataset.facets["schema"].fields] == PUBLISHED.names
        statistics = dataset.outputFacets["outputStatistics"]
        assert (statistics.rowCount, statistics.size, statistics.fileCount) == (42, 1200, 2)
