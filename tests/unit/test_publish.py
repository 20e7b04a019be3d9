"""Publish stage without the Hub: dataset layout, card (quality summary and plots), sources sidecar,
append without a target, idempotency."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
import yaml

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    DOCUMENTS,
    EXAMPLES,
    ExtractMetrics,
    LengthStats,
    Manifest,
    QualitySummary,
    RunRef,
    SuiteRef,
    ValidateMetrics,
    canonical_json,
    sha256_hex,
)
from bonito_tasks.publish import PublishError, publish
from bonito_tasks.publish.card import size_category
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore, safe_segment

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2024-05-01T00:00:00+00:00", run_url="http://airflow.local/runs/1")
SECRET_TEXT = "the confidential body of document"
PLOT_KEY = "plots/label_balance_exqa.png"  # written into the store by make_inputs
PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes"
QUALITY = QualitySummary(  # as validate/report.py writes it
    rows=9, passed=6, quarantined=3, pass_rate=0.93,
    failed_expectations={"output_not_empty": 2, "input_has_context": 1},
    labels={"ynqa": {"yes": 5, "no": 4}},
    output_tokens={"exqa": LengthStats(rows=3, median=12.0, p95=14.0, max=15)},  # not in the card
    report_uri="/store/validate/report/quality.html",
    plots={"label_balance.png": PLOT_KEY, "missing.svg": "plots/not_there.svg"},
)
SUITE = SuiteRef(name="bonito_examples", dataset_suite="bonito_examples_dataset", version="2")


def make_config(tmp_path, **overrides) -> RunConfig:
    values = dict(source=str(tmp_path / "docs"), store=str(tmp_path / "store"), task_types=["exqa", "qa"])
    values |= dict(license="apache-2.0", model_revision="abc123", chunk_max_tokens=500)
    return RunConfig(**(values | overrides))


def make_inputs(
    store, run: RunRef = RUN, task_types=("exqa", "qa"), quality=QUALITY, rows=range(3), id_salt=""
) -> tuple[Manifest, Manifest]:
    """Committed extract and validate stages: 3 documents, 2 of which yield len(rows) examples per
    task type (row i's text depends on i only, its id on i and id_salt)."""
    docs = [
        {"doc_id": sha256_hex(f"doc{i}"), "source_uri": f"/docs/file{i}.{ext}", "media_type": media_type,
         "size_bytes": 100 + i, "text": f"{SECRET_TEXT} {i}", "page_starts": None}
        for i, (ext, media_type) in enumerate([("txt", "text/plain"), ("pdf", "application/pdf"),
                                               ("md", "text/markdown")])
    ]
    sampling = canonical_json({"max_tokens": 256, "n": 1, "temperature": 0.5, "top_p": 0.95})
    examples = [
        {"example_id": sha256_hex(f"{id_salt}{task}-{i}"), "task_type": task, "input": f"Question {i} about {task}?",
         "output": f"Answer {i}", "doc_id": docs[i % 2]["doc_id"], "chunk_id": sha256_hex(f"chunk{i % 2}"),
         "char_start": 0, "char_end": 10, "sample_index": 0, "model_id": "BatsResearch/bonito-v1",
         "model_revision": "abc123", "sampling_params": sampling, "run_id": run.run_id}
        for task in task_types
        for i in rows
    ]
    store.write_bytes(PLOT_KEY, PNG)
    extract = StageWriter(store, run, "extract")
    extract.add("documents", pa.Table.from_pylist(docs, schema=DOCUMENTS))
    validate = StageWriter(store, run, "validate")
    validate.add("examples", pa.Table.from_pylist(examples, schema=EXAMPLES))
    return (
        validate.commit(config_sha256="c", metrics=ValidateMetrics(suite=SUITE, quality=quality or QualitySummary())),
        extract.commit(config_sha256="c", metrics=ExtractMetrics()),
    )


def front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?\n)---\n", card, re.S)
    assert match, "card has no YAML front matter"
    return yaml.safe_load(match[1])


@pytest.fixture
def published(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store)
    manifest = publish(store, RUN, make_config(tmp_path), examples, documents, token=None)
    return store, manifest, (examples, documents)


def test_folder_loads_with_datasets_all_and_per_task_type(published, tmp_path):
    import datasets

    store, manifest, _ = published
    folder = manifest.metrics.dataset_uri
    everything = datasets.load_dataset(folder, split="train", cache_dir=str(tmp_path / "cache"))
    assert everything.num_rows == 6 == manifest.metrics.examples
    assert everything.column_names == EXAMPLES.names
    exqa = datasets.load_dataset(folder, name="exqa", split="train", cache_dir=str(tmp_path / "cache"))
    assert exqa.num_rows == 3 and set(exqa["task_type"]) == {"exqa"}
    assert manifest.metrics.examples_per_task_type == {"exqa": 3, "qa": 3}
    assert manifest.metrics.hub_url is None
    assert sorted(manifest.metrics.files) == [
        "README.md", "assets/label_balance_exqa.png", "data/exqa/train-00000-of-00001.parquet",
        "data/qa/train-00000-of-00001.parquet", "sources.jsonl",
    ]


def test_card_metadata_and_content(published):
    from huggingface_hub import DatasetCard

    store, manifest, _ = published
    card = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/README.md").decode()
    meta = front_matter(card)
    assert [c["config_name"] for c in meta["configs"]] == ["default", "exqa", "qa"]
    assert meta["configs"][0]["default"] is True
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": "data/exqa/*.parquet"}]
    assert meta["license"] == "apache-2.0"
    assert "bonito" in meta["tags"] and meta["size_categories"] == ["n<1K"]
    counts = {info["config_name"]: info["splits"][0]["num_examples"] for info in meta["dataset_info"]}
    assert counts == {"default": 6, "exqa": 3, "qa": 3}
    assert DatasetCard(card).data.license == "apache-2.0"  # huggingface_hub parses it too

    for fact in ["BatsResearch/bonito-v1", "abc123", '"temperature":0.5', "at most 500 tokens", RUN.run_url,
                 "3 documents (2 contributed examples)", "application/pdf (1)"]:
        assert fact in card, fact
    bibtex = re.search(r"```bibtex\n(.*?)```", card, re.S)[1]
    assert bibtex.startswith("@inproceedings{") and bibtex.count("{") == bibtex.count("}")
    assert "Nayak, Nihal V. and Nan, Yiyang and Trost, Avi and Bach, Stephen H." in bibtex
    assert "Learning to Generate Instruction Tuning Datasets for Zero-Shot Task Adaptation" in bibtex
    assert "2402.18334" in bibtex and "year = {2024}" in bibtex


def test_card_quality_summary_and_plots(published):
    store, manifest, _ = published
    dataset_key = store.key(manifest.metrics.dataset_uri)
    card = store.read_bytes(f"{dataset_key}/README.md").decode()
    quality = card.split("## Quality", 1)[1].split("\n## ", 1)[0]
    for fact in ["- Pass rate: 93.0%", "- Rows: 9", "- Passed: 6", "- Quarantined: 3", "Labels, ynqa:",
                 "| Label | Rows |", "| yes | 5 |", "| no | 4 |", "Failed expectations:", "| Reason | Rows |",
                 "| output_not_empty | 2 |", "![label balance](assets/label_balance_exqa.png)"]:
        assert fact in quality, fact
    assert "median" not in quality and "not_there" not in quality and "quality.html" not in quality
    assert store.read_bytes(f"{dataset_key}/assets/label_balance_exqa.png") == PNG
    assert "assets/label_balance_exqa.png" in manifest.metrics.files


def test_plots_named_by_store_uri_are_included(tmp_path):
    store = LocalStore(tmp_path / "store")
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
    uri = store.write_bytes("bonito_dataset/run/validate/report/labels.svg", svg)  # as validate records it
    inputs = make_inputs(store, quality=QualitySummary(plots={"labels.svg": uri}))
    manifest = publish(store, RUN, make_config(tmp_path), *inputs, token=None)
    dataset_key = store.key(manifest.metrics.dataset_uri)
    assert store.read_bytes(f"{dataset_key}/assets/labels.svg") == svg
    assert "![labels](assets/labels.svg)" in store.read_bytes(f"{dataset_key}/README.md").decode()


def test_card_without_a_quality_summary_has_no_quality_section(tmp_path):
    store = LocalStore(tmp_path / "store")
    manifest = publish(store, RUN, make_config(tmp_path), *make_inputs(store, quality=None), token=None)
    card = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/README.md").decode()
    assert "## Quality" not in card and "## Citation" in card
    assert not any(p.startswith("assets/") for p in manifest.metrics.files)


def test_append_without_a_target_is_this_runs_snapshot(tmp_path):
    store = LocalStore(tmp_path / "store")
    manifest = publish(store, RUN, make_config(tmp_path, publish_mode="append"), *make_inputs(store), token=None)
    tag = safe_segment(RUN.run_id)
    assert f"data/exqa/train-{tag}-00000-of-00001.parquet" in manifest.metrics.files
    assert manifest.metrics.examples == manifest.metrics.examples_added == 6
    assert manifest.metrics.duplicates_skipped == 0


def test_pr_mode_needs_a_hub_repo(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(PublishError, match="pull request"):
        publish(store, RUN, make_config(tmp_path, publish_mode="pr"), *make_inputs(store), token=None)


def test_publish_params_reach_the_dag_form():
    from bonito_airflow.params import run_params

    params = run_params(source="/docs", store="/store")
    assert params["publish_mode"].value == "overwrite"
    assert params["publish_mode"].schema["enum"] == ["overwrite", "append", "pr"]
    assert params["export_s3_uri"].value is None and "s3://" in params["export_s3_uri"].description
    with pytest.raises(ValueError):
        RunConfig(source="/d", store="/s", publish_mode="upsert")


def test_card_without_quality_has_no_quality_section(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store, quality=None)
    manifest = publish(store, RUN, make_config(tmp_path), examples, documents, token=None)
    card = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/README.md").decode()
    assert "## Quality" not in card and "## Citation" in card


def test_sources_sidecar_has_provenance_but_no_text(published):
    store, manifest, _ = published
    raw = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/sources.jsonl")
    rows = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(rows) == 3
    assert all(set(row) == {"doc_id", "source_uri", "media_type", "size_bytes"} for row in rows)
    assert SECRET_TEXT.encode() not in raw


def test_rerun_returns_committed_manifest_and_writes_nothing(published, tmp_path):
    store, manifest, inputs = published
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*")}
    again = publish(store, RUN, make_config(tmp_path), *inputs, token=None)
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*")} == before


def test_same_inputs_give_identical_bytes(tmp_path):
    manifests = []
    for name in ("a", "b"):
        store = LocalStore(tmp_path / name)
        manifests.append(publish(store, RUN, make_config(tmp_path), *make_inputs(store), token=None))
    assert manifests[0].metrics.files == manifests[1].metrics.files


def test_shards_split_large_task_types(tmp_path):
    import datasets

    store = LocalStore(tmp_path / "store")
    manifest = publish(store, RUN, make_config(tmp_path), *make_inputs(store), token=None, rows_per_shard=2)
    assert [p for p in manifest.metrics.files if p.startswith("data/exqa/")] == [
        "data/exqa/train-00000-of-00002.parquet", "data/exqa/train-00001-of-00002.parquet"
    ]
    loaded = datasets.load_dataset(manifest.metrics.dataset_uri, split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 6


def test_hub_repo_without_token_fails_before_writing(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store)
    with pytest.raises(PublishError, match="token"):
        publish(store, RUN, make_config(tmp_path, hub_repo_id="org/data"), examples, documents, token=None)
    assert not store.list(f"{RUN.dag_id}/{safe_segment(RUN.run_id)}/publish")


def test_no_examples_is_an_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store, task_types=())
    with pytest.raises(PublishError, match="empty"):
        publish(store, RUN, make_config(tmp_path), examples, documents, token=None)


def test_size_categories():
    sizes = [size_category(n) for n in (0, 999, 1000, 250_000, 10**13)]
    assert sizes == ["n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "n>1T"]

