"""What the local store writes is readable by its consumers: files get the process umask applied
(0666 & ~umask, as open() creates them), not mkstemp's 0600, and are still written atomically.
Checked on a published dataset and on validate's reports, made by the stages themselves."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_publish import RUN as PUBLISH_RUN
from test_publish import make_config as publish_config
from test_publish import make_inputs
from test_validate import RUN as VALIDATE_RUN
from test_validate import chunk_stage, clean_rows, commit_chunks, commit_generate_shard, run_config

from bonito_tasks.publish import publish
from bonito_tasks.store import LocalStore
from bonito_tasks.validate import validate


@pytest.fixture(params=[0o022, 0o027, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_bytes_applies_the_umask_and_replaces_atomically(tmp_path, umask):
    store = LocalStore(tmp_path / "store")
    store.write_bytes("a/b/file.json", b"{}")
    path = tmp_path / "store" / "a" / "b" / "file.json"
    assert mode(path) == 0o666 & ~umask
    path.chmod(0o600)
    store.write_bytes("a/b/file.json", b'{"v": 2}')  # a rewrite is a new file with the umask's mode
    assert mode(path) == 0o666 & ~umask and path.read_bytes() == b'{"v": 2}'
    assert mode(path.parent) == 0o777 & ~umask
    assert os.listdir(path.parent) == ["file.json"]  # no temp file left behind


def test_published_dataset_files_are_readable_by_the_group_and_others_as_the_umask_allows(tmp_path, umask):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store, run=PUBLISH_RUN)
    manifest = publish(store, PUBLISH_RUN, publish_config(tmp_path), examples, documents, token=None)
    folder = Path(manifest.metrics.dataset_uri)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and (folder / "README.md") in files
    assert {p.relative_to(folder).as_posix(): mode(p) for p in files} == {
        p.relative_to(folder).as_posix(): 0o666 & ~umask for p in files}


def test_validate_reports_are_readable_by_the_group_and_others_as_the_umask_allows(tmp_path, umask):
    store = LocalStore(tmp_path / "store")
    commit_chunks(store, 60)
    shards = [commit_generate_shard(store, clean_rows(30))]
    manifest = validate(store, VALIDATE_RUN, run_config(tmp_path), shards, chunk_stage(store))
    quality = manifest.metrics.quality
    reports = [Path(uri) for uri in [quality.report_uri, quality.summary_uri, quality.data_docs_uri,
                                     *quality.plots.values()]]
    assert {p.name: mode(p) for p in reports} == {p.name: 0o666 & ~umask for p in reports}
