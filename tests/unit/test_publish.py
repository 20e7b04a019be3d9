"""Publish stage without the Hub: dataset layout, card, sources sidecar, idempotency."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
import yaml

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import DOCUMENTS, EXAMPLES, Manifest, RunRef, canonical_json, sha256_hex
from bonito_tasks.publish import PublishError, RetryPolicy, publish
from bonito_tasks.publish.card import size_category
from bonito_tasks.store import LocalStore, StageWriter, safe_segment

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2024-05-01T00:00:00+00:00", run_url="http://airflow.local/runs/1")
SECRET_TEXT = "the confidential body of document"
QUALITY = {"pass_rate": 0.93, "quarantined": 3}


def make_config(tmp_path, **overrides) -> RunConfig:
    values = dict(source=str(tmp_path / "docs"), store=str(tmp_path / "store"), task_types=["exqa", "qa"])
    values |= dict(license="apache-2.0", model_revision="abc123", chunk_max_tokens=500)
    return RunConfig(**(values | overrides))


def make_inputs(store, run: RunRef = RUN, task_types=("exqa", "qa"), quality=QUALITY) -> tuple[Manifest, Manifest]:
    """Committed extract and validate stages: 3 documents, 2 of which yield 3 examples per task type."""
    docs = [
        {"doc_id": sha256_hex(f"doc{i}"), "source_uri": f"/docs/file{i}.{ext}", "media_type": media_type,
         "size_bytes": 100 + i, "text": f"{SECRET_TEXT} {i}", "page_starts": None}
        for i, (ext, media_type) in enumerate([("txt", "text/plain"), ("pdf", "application/pdf"),
                                               ("md", "text/markdown")])
    ]
    sampling = canonical_json({"max_tokens": 256, "n": 1, "temperature": 0.5, "top_p": 0.95})
    examples = [
        {"example_id": sha256_hex(f"{task}-{i}"), "task_type": task, "input": f"Question {i} about {task}?",
         "output": f"Answer {i}", "doc_id": docs[i % 2]["doc_id"], "chunk_id": sha256_hex(f"chunk{i % 2}"),
         "char_start": 0, "char_end": 10, "sample_index": 0, "model_id": "BatsResearch/bonito-v1",
         "model_revision": "abc123", "sampling_params": sampling, "run_id": run.run_id}
        for task in task_types
        for i in range(3)
    ]
    extract = StageWriter(store, run, "extract")
    extract.add("documents", pa.Table.from_pylist(docs, schema=DOCUMENTS))
    validate = StageWriter(store, run, "validate")
    validate.add("examples", pa.Table.from_pylist(examples, schema=EXAMPLES))
    return (
        validate.commit(config_sha256="c", metrics={"quality": quality} if quality else {}),
        extract.commit(config_sha256="c"),
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
    folder = manifest.metrics["dataset_uri"]
    everything = datasets.load_dataset(folder, split="train", cache_dir=str(tmp_path / "cache"))
    assert everything.num_rows == 6 == manifest.metrics["examples"] == manifest.counts["examples"]
    assert everything.column_names == EXAMPLES.names
    exqa = datasets.load_dataset(folder, name="exqa", split="train", cache_dir=str(tmp_path / "cache"))
    assert exqa.num_rows == 3 and set(exqa["task_type"]) == {"exqa"}
    assert manifest.metrics["examples_per_task_type"] == {"exqa": 3, "qa": 3}
    assert "hub_url" not in manifest.metrics
    assert sorted(manifest.metrics["files"]) == [
        "README.md", "data/exqa/train-00000-of-00001.parquet", "data/qa/train-00000-of-00001.parquet", "sources.jsonl"
    ]


def test_card_metadata_and_content(published):
    from huggingface_hub import DatasetCard

    store, manifest, _ = published
    card = store.read_bytes(store.key(manifest.metrics["dataset_uri"]) + "/README.md").decode()
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
                 "3 documents (2 contributed examples)", "application/pdf (1)", "pass_rate: 0.93"]:
        assert fact in card, fact
    bibtex = re.search(r"```bibtex\n(.*?)```", card, re.S)[1]
    assert bibtex.startswith("@inproceedings{") and bibtex.count("{") == bibtex.count("}")
    assert "Nayak, Nihal V. and Nan, Yiyang and Trost, Avi and Bach, Stephen H." in bibtex
    assert "Learning to Generate Instruction Tuning Datasets for Zero-Shot Task Adaptation" in bibtex
    assert "2402.18334" in bibtex and "year = {2024}" in bibtex


def test_card_without_quality_has_no_quality_section(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store, quality=None)
    manifest = publish(store, RUN, make_config(tmp_path), examples, documents, token=None)
    card = store.read_bytes(store.key(manifest.metrics["dataset_uri"]) + "/README.md").decode()
    assert "## Quality" not in card and "## Citation" in card


def test_sources_sidecar_has_provenance_but_no_text(published):
    store, manifest, _ = published
    raw = store.read_bytes(store.key(manifest.metrics["dataset_uri"]) + "/sources.jsonl")
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
    assert manifests[0].metrics["files"] == manifests[1].metrics["files"]


def test_shards_split_large_task_types(tmp_path):
    import datasets

    store = LocalStore(tmp_path / "store")
    manifest = publish(store, RUN, make_config(tmp_path), *make_inputs(store), token=None, rows_per_shard=2)
    assert [p for p in manifest.metrics["files"] if p.startswith("data/exqa/")] == [
        "data/exqa/train-00000-of-00002.parquet", "data/exqa/train-00001-of-00002.parquet"
    ]
    loaded = datasets.load_dataset(manifest.metrics["dataset_uri"], split="train", cache_dir=str(tmp_path / "cache"))
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


def test_retry_delay_grows_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 8.0), (9, 8.0)]:
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert policy.delay(1, retry_after_s=5.0) == 5.0
    assert policy.delay(1, retry_after_s=60.0) == 8.0


def test_size_categories():
    sizes = [size_category(n) for n in (0, 999, 1000, 250_000, 10**13)]
    assert sizes == ["n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "n>1T"]

