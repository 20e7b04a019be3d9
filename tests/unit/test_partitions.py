"""Extract and chunk as partitions of the source: the plan, one partition vs many, S3, a partition
whose files are all rejected, and a partition killed mid-way then retried."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bonito_tasks.chunk import chunk
from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import NothingExtracted, collect_documents, extract, extract_partition
from bonito_tasks.extract.plan import partition_files, plan
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore, open_store
from conftest import REPO, SAMPLE_DOCS, make_config

RUN = RunRef(dag_id="d", run_id="r1")


def sentence(i: int) -> str:
    return f"Clause {i} of the agreement sets out, in plain words, one duty of the tenant towards the owner."


def write_corpus(folder):
    """Documents whose paragraphs repeat across files (exact duplicate chunks in other partitions),
    a duplicate file, and files of different sizes (partitions balanced by bytes)."""
    folder.mkdir(parents=True)
    shared = "\n\n".join(" ".join(sentence(1000 + p * 10 + s) for s in range(4)) for p in range(3))
    for d in range(8):
        own = "\n\n".join(" ".join(sentence(d * 100 + p * 10 + s) for s in range(4)) for p in range(2 + d % 3))
        (folder / f"doc{d}.txt").write_text(f"{own}\n\n{shared}\n")
    shutil.copy(folder / "doc1.txt", folder / "doc1-copy.txt")  # same content, kept once
    shutil.copy(SAMPLE_DOCS / "gpl-3.0.pdf", folder / "gpl.pdf")
    return folder


def run_all(store, run, config, s3=None):
    documents = extract(store, run, config, s3)
    return documents, chunk(store, run, config, documents)


def chunk_rows(store, manifest):
    return store.read_table(manifest, "chunks").to_pylist()


def doc_ids(store, manifest):
    """The documents the stage keeps: every documents row but the copies an earlier partition holds."""
    dropped = {(r["doc_id"], r["source_uri"]) for r in store.read_table(manifest, "duplicate_documents").to_pylist()}
    rows = store.read_table(manifest, "documents", columns=["doc_id", "source_uri"]).to_pylist()
    return sorted(r["doc_id"] for r in rows if (r["doc_id"], r["source_uri"]) not in dropped)


def test_the_plan_balances_contiguous_partitions_by_bytes(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    sizes = [5000, 100, 100, 100, 4800, 200, 2500, 2500, 60_000_000]
    for i, size in enumerate(sizes):
        (source / f"f{i}.txt").write_bytes(b"x" * size)
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(source), partition_bytes=5000, max_partitions=3,
                         max_file_bytes=50 * 2**20)
    planned = plan(store, RUN, config)

    assert planned.metrics.partitions == 3  # 15300 readable bytes want 4; max_partitions caps it
    assert planned.metrics.source_bytes == 15_300  # the 60 MB file is rejected unread: it weighs nothing
    parts = [partition_files(store, planned, p) for p in range(3)]
    listing = [r["uri"] for part in parts for r in part]
    assert listing == sorted(listing) and len(listing) == len(sizes)  # contiguous ranges of the listing
    loads = [sum(r["size_bytes"] for r in part if r["size_bytes"] <= config.max_file_bytes) for part in parts]
    assert max(loads) <= 1.6 * (15_300 / 3) and min(loads) > 0, loads
    assert all(r["partition"] == p for p, part in enumerate(parts) for r in part)


def test_one_partition_and_many_give_the_same_documents_and_chunks(tmp_path):
    source = write_corpus(tmp_path / "src")
    common = dict(source=str(source), chunk_max_tokens=60, chunk_shard_size=7)
    one_store, many_store = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "many")
    one_docs, one_chunks = run_all(one_store, RUN, make_config(tmp_path, **common))
    many_docs, many_chunks = run_all(many_store, RUN, make_config(tmp_path, partition_bytes=1500, **common))

    assert one_docs.metrics.partitions == 1 and many_docs.metrics.partitions >= 4
    assert doc_ids(one_store, one_docs) == doc_ids(many_store, many_docs)
    assert one_docs.metrics.documents == many_docs.metrics.documents == 9  # 10 files, one a copy
    assert one_docs.metrics.duplicate_files == many_docs.metrics.duplicate_files == 1
    one_rows, many_rows = chunk_rows(one_store, one_chunks), chunk_rows(many_store, many_chunks)
    assert one_rows == many_rows  # same ids, spans, texts and also_in, in the same order
    assert sum(len(r["also_in"]) for r in one_rows) == one_chunks.metrics.duplicate_chunks >= 7 * 3
    assert one_chunks.metrics.shards == many_chunks.metrics.shards == -(-len(one_rows) // 7)
    for metrics in (one_chunks.metrics, many_chunks.metrics):
        assert (metrics.documents, metrics.chunks, metrics.shard_size) == (9, len(one_rows), 7)


def test_s3_sources_partition_the_same_way(tmp_path, s3_bucket):
    import boto3

    bucket, kwargs = s3_bucket
    source = write_corpus(tmp_path / "src")
    client = boto3.client("s3", **kwargs)
    for path in sorted(source.iterdir()):
        client.put_object(Bucket=bucket, Key=f"docs/{path.name}", Body=path.read_bytes())
    common = dict(chunk_max_tokens=60, chunk_shard_size=7, partition_bytes=1500)
    local = LocalStore(tmp_path / "local")
    _, local_chunks = run_all(local, RUN, make_config(tmp_path, source=str(source), **common))
    s3_store = open_store(f"s3://{bucket}/store", **kwargs)
    s3_docs, s3_chunks = run_all(s3_store, RUN, make_config(tmp_path, source=f"s3://{bucket}/docs/", **common), kwargs)

    assert s3_docs.metrics.partitions >= 4 and s3_docs.metrics.documents == 9
    strip = [{k: v for k, v in r.items()} for r in chunk_rows(local, local_chunks)]
    assert [r["text"] for r in chunk_rows(s3_store, s3_chunks)] == [r["text"] for r in strip]


def test_a_partition_of_rejects_succeeds_but_a_run_with_nothing_fails(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a-broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (source / "b-empty.txt").write_bytes(b"")
    (source / "c-good.txt").write_text("\n\n".join(sentence(i) for i in range(30)))
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(source), partition_bytes=40)
    planned = plan(store, RUN, config)
    parts = [extract_partition(store, RUN, config, planned, p) for p in range(planned.metrics.partitions)]
    assert [(m.metrics.documents, m.metrics.rejects) for m in parts] == [(0, 2), (1, 0), (0, 0)]
    assert collect_documents(store, RUN, config, parts).metrics.documents == 1

    (source / "c-good.txt").unlink()
    run = RunRef(dag_id="d", run_id="r2")
    planned = plan(store, run, config)
    parts = [extract_partition(store, run, config, planned, p) for p in range(planned.metrics.partitions)]
    with pytest.raises(NothingExtracted, match="2 file\\(s\\) rejected.*a-broken.pdf"):
        collect_documents(store, run, config, parts)


WORKER = textwrap.dedent("""
    import sys, time
    import bonito_tasks.extract as extract_stage
    import bonito_tasks.chunk as chunk_stage
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.store import LocalStore

    store_root, config_json, stage = sys.argv[1:]
    store, config = LocalStore(store_root), RunConfig.model_validate_json(config_json)
    run = RunRef(dag_id="d", run_id="r1")
    extract_stage.SHARD_TEXT_BYTES = 1  # one documents part per file, so a kill leaves parts behind
    chunk_stage.PART_ROWS = 1
    read = extract_stage.read_documents
    def slow(*args, **kwargs):
        time.sleep(0.3)
        return read(*args, **kwargs)
    extract_stage.read_documents = slow
    planned = extract_stage.plan(store, run, config)
    if stage == "extract":
        extract_stage.extract_partition(store, run, config, planned, 0)
    else:
        documents = extract_stage.extract(store, run, config)
        original = chunk_stage.Chunker.split_counted
        def slow_split(self, text):
            time.sleep(0.3)
            return original(self, text)
        chunk_stage.Chunker.split_counted = slow_split
        chunk_stage.chunk_partition(store, run, config, documents, 0)
""")


@pytest.mark.parametrize("stage", ["extract", "chunk"])
def test_a_partition_killed_mid_way_then_retried_keeps_everything_exactly_once(tmp_path, stage):
    source = write_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(source), chunk_max_tokens=60, chunk_shard_size=7)
    folder = StageWriter(store, RUN, stage, 0).prefix
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(store.root), config.model_dump_json(), stage],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len([k for k in store.list(folder) if k.endswith(".parquet")]) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the worker finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert StageWriter(store, RUN, stage, 0).committed() is None  # parts written, nothing committed

    documents = extract(store, RUN, config)  # the retry: every partition, then the stage
    chunks = chunk(store, RUN, config, documents)
    fresh = LocalStore(tmp_path / "fresh")
    fresh_documents, fresh_chunks = run_all(fresh, RUN, config)
    assert doc_ids(store, documents) == doc_ids(fresh, fresh_documents)
    assert len(set(doc_ids(store, documents))) == len(doc_ids(store, documents)) == 9
    assert chunk_rows(store, chunks) == chunk_rows(fresh, fresh_chunks)
    # Only what the partition's manifest lists remains of the killed attempt.
    committed = StageWriter(store, RUN, stage, 0).committed()
    listed = {f"{folder}/{s.path}" for s in committed.shards} | {f"{folder}/_manifest.json"}
    assert set(store.list(folder)) == listed


# ---- Generate shards sized to amortize the engine


def test_explicit_shard_size_wins(tmp_path):
    from bonito_tasks.chunk import generate_shard_size
    from bonito_tasks.contracts import GenerateFigures

    figures = GenerateFigures(run_id="r0", model_id="m", backend="vllm", tensor_parallel_size=1, engine_start_s=60,
                              seconds_per_generation=0.01)
    assert generate_shard_size(10_000, make_config(tmp_path, chunk_shard_size=500), figures) == 500


def test_auto_sizing_fills_the_slots_and_keeps_engine_start_under_a_tenth(tmp_path):
    from bonito_tasks.chunk import generate_shard_size
    from bonito_tasks.contracts import GenerateFigures

    def figures(start_s, s_per_generation):
        return GenerateFigures(run_id="r0", model_id="m", backend="vllm", tensor_parallel_size=1,
                               engine_start_s=start_s, seconds_per_generation=s_per_generation)

    config = make_config(tmp_path, gpu_slots=8, target_shard_minutes=60, task_types=["exqa", "ynqa", "nli"])
    # Without figures: one shard per slot.
    assert generate_shard_size(8000, config, None) == 1000
    # 5M chunks x 3 task types at 10 ms per generation = 41.7 GPU-hours: 42 shards of about an hour.
    size = generate_shard_size(5_000_000, config, figures(60, 0.01))
    assert -(-5_000_000 // size) == 42
    # Little work: fewer shards than slots rather than shards where the engine start dominates.
    size = generate_shard_size(3000, config, figures(60, 0.01))  # 90 s of work in all, 60 s engine start
    shards = -(-3000 // size)
    assert shards == 1 and 60 / (60 + 3000 * 3 * 0.01 / shards) > 0.1  # nothing smaller is better
    size = generate_shard_size(200_000, config, figures(60, 0.01))  # 6000 s of work: 8 slots, 750 s each
    shards = -(-200_000 // size)
    assert shards == 8 and 60 / (60 + 200_000 * 3 * 0.01 / shards) <= 0.1


def test_figures_of_the_last_run_on_the_same_model_are_used(tmp_path):
    from bonito_tasks.contracts import GenerateMetrics
    from bonito_tasks.figures import read_figures, record_figures

    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path)
    later = RUN.model_copy(update={"run_id": "later"})
    assert read_figures(store, later, config) is None
    shards = [GenerateMetrics(prompts=100, generations=100, engine_start_s=9.0, generate_s=20.0),
              GenerateMetrics(prompts=100, generations=100, engine_start_s=11.0, generate_s=30.0)]
    record_figures(store, RUN, config, shards)
    figures = read_figures(store, later, config)
    assert (figures.engine_start_s, figures.seconds_per_generation) == (10.0, 0.25)
    assert read_figures(store, later, make_config(tmp_path, model_id="other/model")) is None
    assert read_figures(store, later, make_config(tmp_path, backend="server")) is None
    # A retried run sizes its shards as its first attempt did: never by its own figures.
    assert read_figures(store, RUN, config) is None
    record_figures(store, later, config, shards[:1])
    assert read_figures(store, later, config).run_id == RUN.run_id
    assert read_figures(store, RUN.model_copy(update={"run_id": "third"}), config).run_id == "later"


def test_more_fixed_shards_than_airflow_can_map_fail_fast(tmp_path, monkeypatch):
    import bonito_tasks.chunk as chunk_stage
    from bonito_tasks.errors import PermanentFailure

    monkeypatch.setattr(chunk_stage, "MAX_SHARDS", 3)
    source = write_corpus(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(source), chunk_max_tokens=60, chunk_shard_size=2)
    documents = extract(store, RUN, config)
    with pytest.raises(chunk_stage.TooManyShards, match="Airflow maps at most 3.*chunk_shard_size to at least"):
        chunk(store, RUN, config, documents)
    assert issubclass(chunk_stage.TooManyShards, PermanentFailure)
