"""The run summary reads back what each stage committed. The manifests here are written directly
(the summary reads nothing else), with the counts and metrics the stages record."""

import json

import pytest

from bonito_tasks.contracts import (
    ChunkMetrics,
    ExtractMetrics,
    GenerateMetrics,
    Manifest,
    PublishMetrics,
    QualitySummary,
    RunRef,
    ShardRef,
    SuiteRef,
    ValidateMetrics,
)
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import open_store
from bonito_tasks.summary import format_summary, run_summary
from conftest import make_config

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-11-25T00:00:00+00:00")


def _commit(store, stage, metrics, shard=None, tables=None):
    writer = StageWriter(store, RUN, stage, partition=shard)
    shards = [ShardRef(table=t, path=f"{t}.parquet", rows=n, sha256="0" * 64) for t, n in (tables or {}).items()]
    manifest = Manifest(stage=stage, dag_id=RUN.dag_id, run_id=RUN.run_id, uri=store.uri(writer.manifest_key),
                        shards=shards, counts=tables or {}, metrics=metrics, config_sha256="c", code_version="test")
    store.write_bytes(writer.manifest_key, manifest.to_json().encode())


def _shard(store, i, examples, dropped, tokens, wall_s):
    _commit(store, "generate", GenerateMetrics(prompts=examples + dropped, generated_tokens=tokens,
                                               attempt_wall_s=wall_s + 2, engine_start_s=2, generate_s=wall_s,
                                               output_tokens_per_s=round(tokens / wall_s, 1)),
            shard=i, tables={"examples": examples, "dropped_generations": dropped})


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


def test_complete_run(store, tmp_path):
    _commit(store, "extract", ExtractMetrics(files=7, documents=5, rejects=2, rejects_by_reason={"corrupt_pdf": 2}),
            tables={"documents": 5, "rejects": 2})
    _commit(store, "chunk", ChunkMetrics(chunks=30, shards=2, duplicate_chunks=1, short_chunks=3),
            tables={"chunks": 30})
    _shard(store, 0, examples=18, dropped=2, tokens=3000, wall_s=10.0)
    _shard(store, 1, examples=9, dropped=1, tokens=1000, wall_s=30.0)
    quality = QualitySummary(rows=27, passed=25, quarantined=2, pass_rate=0.925926,
                             report_uri="file:///r/quality.html")
    _commit(store, "validate", ValidateMetrics(examples_in=27, passed=25, quarantined=2, quality=quality,
                                               suite=SuiteRef(name="s", dataset_suite="d", version="1")),
            tables={"examples": 25, "quarantine": 2})
    _commit(store, "publish", PublishMetrics(examples=25, examples_added=25, dataset_uri="file:///d",
                                             publish_mode="overwrite", hub_url="http://hub/x"))

    summary = run_summary(store, RUN, make_config(tmp_path, tensor_parallel_size=2))

    assert summary.stages == {"extract": "committed", "chunk": "committed", "generate": "2/2 shards committed",
                              "validate": "committed", "compare": "not committed", "publish": "committed"}
    assert summary.run_folder == store.uri("bonito_dataset/manual__2026-11-25T00_00_00_00_00")
    assert (summary.extracted.files, summary.extracted.documents, summary.extracted.rejects) == (7, 5, 2)
    assert summary.extracted.rejects_by_reason == {"corrupt_pdf": 2}
    generate = summary.generated
    assert (generate.examples, generate.dropped_generations, generate.generated_tokens) == (27, 3, 4000)
    assert generate.output_tokens_per_s == 100.0  # 4000 tokens over 40 s, not the mean of 300 and 33
    assert generate.gpu_hours == round(44 * 2 / 3600, 4)  # two GPUs per engine, engine starts included
    assert generate.engine_start_s == 4 and generate.generate_s == 40
    assert summary.validated.quarantined == 2 and summary.validated.passed == 25
    assert summary.published.hub_url == "http://hub/x"
    written = json.loads(store.read_bytes("bonito_dataset/manual__2026-11-25T00_00_00_00_00/summary.json"))
    assert written == summary.model_dump(mode="json")
    text = format_summary(summary)
    assert "generate  2/2 shards committed" in text and "gpu_hours=0.0244" in text
    assert "rejects=2 {'corrupt_pdf': 2}" in text and "pass_rate=0.925926" in text


def test_run_that_failed_in_generate(store, tmp_path):
    _commit(store, "extract", ExtractMetrics(files=5, documents=5), tables={"documents": 5})
    _commit(store, "chunk", ChunkMetrics(chunks=30, shards=3), tables={"chunks": 30})
    _shard(store, 0, examples=10, dropped=0, tokens=500, wall_s=5.0)

    summary = run_summary(store, RUN, make_config(tmp_path, backend="server"))

    assert summary.stages["generate"] == "1/3 shards committed"
    assert summary.stages["validate"] == summary.stages["publish"] == "not committed"
    assert summary.generated.gpu_hours is None  # a shared server's GPU time is not this run's
    assert summary.validated is None and summary.published is None


def test_run_that_failed_in_extract(store, tmp_path):
    summary = run_summary(store, RUN, make_config(tmp_path))
    assert summary.stages == {"extract": "not committed", "chunk": "not committed", "generate": "not started",
                                 "validate": "not committed", "compare": "not committed", "publish": "not committed"}
