"""The stage harness: commit protocol, reuse, partitions and their combination, code version."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DOCUMENTS, ExtractMetrics, Manifest, RunRef, StageName
from bonito_tasks.stage import CombineStage, StageWriter, UndeclaredConfig, code_modules, code_version
from bonito_tasks.store import StoreError
from conftest import make_config, work_stage

REPO = Path(__file__).resolve().parents[2]
RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-11-25T10:00:00+00:00")


@pytest.fixture
def store(any_store):
    return any_store


def docs_table(n: int, first: int = 0) -> pa.Table:
    return pa.Table.from_pylist(
        [{"doc_id": f"{i:064x}", "source_uri": f"/d/{i}.txt", "media_type": "text/plain", "size_bytes": 3,
          "text": f"doc {i}", "page_starts": None} for i in range(first, first + n)],
        DOCUMENTS,
    )


def test_stage_commit_and_read_back(store):
    writer = StageWriter(store, RUN, "extract")
    assert writer.committed() is None
    writer.begin()
    writer.add("documents", docs_table(3))
    writer.add("documents", docs_table(2))
    manifest = writer.commit(metrics=ExtractMetrics(documents=5))
    assert manifest.uri == store.uri("bonito_dataset/manual__2026-11-25T10_00_00_00_00/extract/_manifest.json")
    assert manifest.counts == {"documents": 5}
    reread = store.read_manifest(manifest.uri)
    assert reread == manifest and isinstance(reread.metrics, ExtractMetrics) and reread.metrics.documents == 5
    table = store.read_table(reread, "documents")
    assert table.num_rows == 5 and table.schema == DOCUMENTS
    assert store.read_shard(reread, "documents", 1).num_rows == 2


def test_manifest_written_last_and_retry_starts_clean(store):
    writer = StageWriter(store, RUN, "chunk")
    writer.begin()
    writer.add("documents", docs_table(1))
    # The attempt dies here: shards exist, the manifest does not, so nothing is committed.
    assert writer.committed() is None
    retry = StageWriter(store, RUN, "chunk")
    retry.begin()
    assert store.list(retry.prefix) == []
    retry.add("documents", docs_table(4))
    manifest = retry.commit(metrics=ExtractMetrics())
    assert [s.path for s in manifest.shards] == ["part-00000.documents.parquet"]
    assert StageWriter(store, RUN, "chunk").committed() == manifest


def test_corrupted_shard_is_detected(store):
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    writer.add("documents", docs_table(1))
    manifest = writer.commit(metrics=ExtractMetrics())
    store.write_bytes(f"{writer.prefix}/part-00000.documents.parquet", b"garbage")
    with pytest.raises(StoreError, match="sha256"):
        store.read_table(manifest, "documents")


def test_metrics_are_typed():
    """A metric renamed or misspelled is an error where it is written, not a silently empty summary."""
    with pytest.raises(ValueError):
        ExtractMetrics(documentz=1)
    manifest_json = {"stage": "extract", "dag_id": "d", "run_id": "r", "uri": "/m", "config_sha256": "c",
                     "code_version": "v", "metrics": {"stage": "extract", "files": 2, "renamed_metric": 1}}
    with pytest.raises(ValueError, match="renamed_metric"):
        Manifest.model_validate(manifest_json)


def test_a_stage_runs_once_checks_before_commit_and_redoes_on_new_inputs(store, tmp_path):
    calls = []

    def work(writer):
        calls.append(writer.prefix)
        writer.add("documents", docs_table(len(calls)))
        return ExtractMetrics(documents=2)

    def failing_check(writer):
        assert store.list(writer.prefix)  # the parts are written when the contract runs
        raise ValueError("contract broken")

    config = make_config(tmp_path)
    with pytest.raises(ValueError, match="contract broken"):
        work_stage("extract", work, check=failing_check)(store, RUN, config).execute()
    assert StageWriter(store, RUN, "extract").committed() is None  # nothing committed

    extract = work_stage("extract", work, fields=frozenset({"max_file_bytes"}))
    first = extract(store, RUN, config).execute()
    again = extract(store, RUN, config).execute()
    assert again == first and len(calls) == 2  # the retry after success reused the manifest
    assert first.metrics.wall_s > 0  # the base times the work
    # A field outside the slice changes nothing; one inside redoes the stage.
    assert extract(store, RUN, make_config(tmp_path, license="mit")).execute() == first
    other_config = extract(store, RUN, make_config(tmp_path, max_file_bytes=10)).execute()
    assert len(calls) == 3 and other_config.config_sha256 != first.config_sha256
    chunk = work_stage("chunk", work, reads=("extract",))
    downstream = chunk(store, RUN, config, [first]).execute()
    redone = chunk(store, RUN, config, [other_config]).execute()
    assert len(calls) == 5 and redone.input_manifest_sha256 != downstream.input_manifest_sha256
    assert redone.reads == ["extract"]


def test_a_stage_reads_only_its_declared_inputs_and_config(store, tmp_path):
    config = make_config(tmp_path)
    nosy = work_stage("extract", lambda writer: ExtractMetrics(files=len(config_of[0].task_types)),
                      fields=frozenset({"source"}))
    stage = nosy(store, RUN, config)
    config_of = [stage.config]
    with pytest.raises(UndeclaredConfig, match="stage extract reads config.task_types"):
        stage.execute()
    done = work_stage("extract", lambda writer: ExtractMetrics())(store, RUN, config).execute()
    with pytest.raises(ValueError, match="reads \\['extract'\\], which it does not declare"):
        work_stage("validate", lambda writer: ExtractMetrics())(store, RUN, config, [done])


def test_a_stage_redone_with_the_same_result_keeps_its_readers_reused(store, tmp_path):
    """Inputs enter a key by content: an upstream stage redone (new config) that writes the same
    parts leaves the stages after it reused."""
    calls = []

    def same_output(writer):
        calls.append(writer.stage)
        writer.add("documents", docs_table(2))
        return ExtractMetrics(documents=2)

    extract = work_stage("extract", same_output, fields=frozenset({"hub_repo_id"}))
    chunk = work_stage("chunk", same_output, reads=("extract",))
    first = extract(store, RUN, make_config(tmp_path)).execute()
    chunked = chunk(store, RUN, make_config(tmp_path), [first]).execute()
    second = extract(store, RUN, make_config(tmp_path, hub_repo_id="acme/x")).execute()
    assert second.reuse_key != first.reuse_key and second.content_sha256 == first.content_sha256
    assert chunk(store, RUN, make_config(tmp_path), [second]).execute() == chunked
    assert calls == ["extract", "chunk", "extract"]


def test_partitions_commit_on_their_own_and_combine_into_one_stage(store, tmp_path):
    ran = []
    config = make_config(tmp_path)

    def partition_work(rank: int, world_size: int, total: int = 7):
        def work(writer):
            ran.append(rank)
            mine = [i for i in range(total) if i % world_size == rank]
            writer.add("documents", docs_table(len(mine), first=mine[0] * 100))
            return ExtractMetrics(documents=len(mine))
        return work

    def partition(rank: int) -> Manifest:
        return work_stage("extract", partition_work(rank, 3))(store, RUN, config, partition=rank).execute()

    parts = [partition(r) for r in range(3)]
    assert [m.counts["documents"] for m in parts] == [3, 2, 2]
    # A retry of one partition redoes nothing when it had committed; a lost partition is redone alone.
    store.delete(store.key(parts[1].uri))
    ran.clear()
    parts[1], parts[0] = partition(1), partition(0)
    assert ran == [1]

    class Combine(CombineStage):
        name = StageName.EXTRACT
        reads = (StageName.EXTRACT,)

    combined = Combine(store, RUN, config, parts).execute()
    assert combined.uri == store.uri(f"{StageWriter(store, RUN, 'extract').prefix}/_manifest.json")
    assert combined.counts == {"documents": 7} and combined.metrics.partitions == 3
    assert store.read_table(combined, "documents").num_rows == 7
    assert Combine(store, RUN, config, parts).execute() == combined


def test_a_stage_code_version_covers_its_package_and_what_it_imports():
    publish, generate = code_modules("bonito_tasks.publish"), code_modules("bonito_tasks.generate.run")
    assert {"bonito_tasks.publish.card", "bonito_tasks.stage", "bonito_tasks.contracts"} <= set(publish)
    assert {"bonito_tasks.format", "bonito_tasks.generate.parse", "bonito_tasks.generate.server"} <= set(generate)
    assert not any(m.startswith("bonito_tasks.publish") for m in generate)  # a card fix keeps the GPU work
    assert "bonito_tasks.config" not in generate  # the config slice enters the key as values
    assert code_version("bonito_tasks.publish").startswith(__import__("bonito_tasks").__version__ + "+")
    assert code_version("bonito_tasks.publish") != code_version("bonito_tasks.generate.run")


def test_a_code_change_redoes_only_the_stages_whose_code_changed(tmp_path):
    """Run the real plan stage from a copy of the library, change one file, run it again: a change
    in the card code keeps its manifest, a change in the extract package redoes it."""
    package_root = tmp_path / "lib"
    shutil.copytree(REPO / "bonito_tasks", package_root / "bonito_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("some text")
    script = textwrap.dedent(f"""
        from bonito_tasks.config import RunConfig
        from bonito_tasks.contracts import RunRef
        from bonito_tasks.extract.plan import Plan
        from bonito_tasks.store import LocalStore

        store = LocalStore({str(tmp_path / "store")!r})
        stage = Plan(store, RunRef(dag_id="d", run_id="r"), RunConfig(source={str(tmp_path / "src")!r}, store="s"))
        print("REUSED" if stage.reusable() else "WORK")
        stage.execute()
    """)

    def attempt() -> str:
        env = {**os.environ, "PYTHONPATH": str(package_root)}
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              check=True, cwd=tmp_path).stdout.strip()

    def edit(relative: str) -> None:
        path = package_root / "bonito_tasks" / relative
        path.write_text(path.read_text() + "\n# a fix\n")

    assert attempt() == "WORK"
    assert attempt() == "REUSED"  # same code: the retry reuses the committed manifest
    edit("publish/card.py")
    assert attempt() == "REUSED"
    edit("extract/readers.py")
    assert attempt() == "WORK"
