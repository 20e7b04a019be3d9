"""The stage harness: commit protocol, reuse, partitions and their combination, code version."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from bonito_tasks.contracts import DOCUMENTS, ExtractMetrics, Manifest, RunRef
from bonito_tasks.stage import StageWriter, code_version, combine_partitions, run_stage
from bonito_tasks.store import StoreError

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
    manifest = writer.commit(config_sha256="c" * 64, metrics=ExtractMetrics(documents=5))
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
    manifest = retry.commit(config_sha256="c" * 64, metrics=ExtractMetrics())
    assert [s.path for s in manifest.shards] == ["part-00000.documents.parquet"]
    assert StageWriter(store, RUN, "chunk").reusable("c" * 64) == manifest
    assert StageWriter(store, RUN, "chunk").reusable("d" * 64) is None


def test_corrupted_shard_is_detected(store):
    writer = StageWriter(store, RUN, "extract")
    writer.begin()
    writer.add("documents", docs_table(1))
    manifest = writer.commit(config_sha256="c" * 64, metrics=ExtractMetrics())
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


def test_run_stage_runs_once_checks_before_commit_and_redoes_on_new_inputs(store):
    calls = []

    def work(writer):
        calls.append(writer.prefix)
        writer.add("documents", docs_table(2))
        return ExtractMetrics(documents=2)

    def failing_check(writer):
        assert store.list(writer.prefix)  # the parts are written when the contract runs
        raise ValueError("contract broken")

    with pytest.raises(ValueError, match="contract broken"):
        run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=work, check=failing_check)
    assert StageWriter(store, RUN, "extract").committed() is None  # nothing committed

    first = run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=work)
    again = run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=work)
    assert again == first and len(calls) == 2  # the retry after success reused the manifest
    other_config = run_stage(store, RUN, "extract", config_sha256="d", inputs=[], work=work)
    assert len(calls) == 3 and other_config.config_sha256 == "d"
    downstream = run_stage(store, RUN, "chunk", config_sha256="c", inputs=[first], work=work)
    redone = run_stage(store, RUN, "chunk", config_sha256="c", inputs=[other_config], work=work)
    assert len(calls) == 5 and redone.input_manifest_sha256 != downstream.input_manifest_sha256


def test_partitions_commit_on_their_own_and_combine_into_one_stage(store):
    ran = []

    def partition_work(rank: int, world_size: int, total: int = 7):
        def work(writer):
            ran.append(rank)
            mine = [i for i in range(total) if i % world_size == rank]
            writer.add("documents", docs_table(len(mine), first=mine[0] * 100))
            return ExtractMetrics(documents=len(mine))
        return work

    parts = [run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=partition_work(r, 3), partition=r)
             for r in range(3)]
    assert [m.counts["documents"] for m in parts] == [3, 2, 2]
    # A retry of one partition redoes nothing when it had committed; a lost partition is redone alone.
    store.delete(store.key(parts[1].uri))
    ran.clear()
    parts[1] = run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=partition_work(1, 3), partition=1)
    parts[0] = run_stage(store, RUN, "extract", config_sha256="c", inputs=[], work=partition_work(0, 3), partition=0)
    assert ran == [1]

    combined = combine_partitions(store, RUN, "extract", parts, config_sha256="c")
    assert combined.uri == store.uri(f"{StageWriter(store, RUN, 'extract').prefix}/_manifest.json")
    assert combined.counts == {"documents": 7} and combined.metrics.partitions == 3
    assert store.read_table(combined, "documents").num_rows == 7
    assert combine_partitions(store, RUN, "extract", parts, config_sha256="c") == combined


def test_code_version_follows_the_source(tmp_path):
    package = tmp_path / "bonito_tasks"
    shutil.copytree(REPO / "bonito_tasks", package, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_version(package) == code_version()
    (package / "config.py").write_text((package / "config.py").read_text() + "\n# a fix\n")
    assert code_version.__wrapped__(package) != code_version()
    assert code_version().startswith(__import__("bonito_tasks").__version__ + "+")


def test_a_code_change_makes_a_retried_stage_redo_its_work(tmp_path):
    """Run a committed stage again from a copy of the library with one file changed: the manifest
    written by the old code is not reused."""
    package_root = tmp_path / "lib"
    shutil.copytree(REPO / "bonito_tasks", package_root / "bonito_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(f"""
        import pyarrow as pa
        from bonito_tasks.contracts import DOCUMENTS, ExtractMetrics, RunRef
        from bonito_tasks.stage import run_stage
        from bonito_tasks.store import LocalStore

        def work(writer):
            print("WORK")
            writer.add("documents", pa.Table.from_pylist([], DOCUMENTS))
            return ExtractMetrics()

        store = LocalStore({str(tmp_path / "store")!r})
        run_stage(store, RunRef(dag_id="d", run_id="r"), "extract", config_sha256="c", inputs=[], work=work)
    """)

    def attempt() -> str:
        env = {**os.environ, "PYTHONPATH": str(package_root)}
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              check=True, cwd=tmp_path).stdout

    assert attempt() == "WORK\n"
    assert attempt() == ""  # same code: the retry reuses the committed manifest
    config = package_root / "bonito_tasks" / "config.py"
    config.write_text(config.read_text() + "\n# a bug fix\n")
    assert attempt() == "WORK\n"  # new code: the stage is redone
