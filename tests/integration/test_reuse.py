"""A retried run redoes exactly the stages whose reuse key changed: their config slice, their code,
their inputs' content. The whole pipeline runs for real (extract, chunk, vLLM's CPU engine with the
tiny model, GX validate, local publish); a code change is simulated by pointing the code hash at a
copy of the library with one file edited (what a deployment of new code does to the hash)."""

import shutil
from pathlib import Path

import pytest

import bonito_tasks.stage as stage_module
from bonito_tasks.chunk import chunk
from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import extract
from bonito_tasks.generate.run import generate_shard
from bonito_tasks.publish import publish
from bonito_tasks.store import LocalStore
from bonito_tasks.validate import validate
from conftest import SAMPLE_DOCS, TINY_MODEL, make_config

pytestmark = pytest.mark.vllm
RUN = RunRef(dag_id="d", run_id="manual__2026-12-04")
STAGES = ("extract", "chunk", "generate", "validate", "publish")
LENIENT = dict(min_pass_rate=0.0, max_duplicate_rate=1.0, max_label_share=1.0, near_dup_across_runs=False)


class CountingEngine:
    """The shared engine, counting the batches it is asked to generate."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def prompt_tokens(self, prompts):
        return self.engine.prompt_tokens(prompts)

    def stream(self, *args, **kwargs):
        self.calls += 1
        return self.engine.stream(*args, **kwargs)


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A copy of the library whose files the code hash reads: edit one to 'deploy' a code change."""
    copy = tmp_path / "lib" / "bonito_tasks"
    shutil.copytree(stage_module.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stage_module, "PACKAGE_DIR", copy)
    stage_module.code_version.cache_clear()
    yield copy
    stage_module.code_version.cache_clear()


def deploy(library: Path, relative: str) -> None:
    path = library / relative
    path.write_text(path.read_text() + "\n# a fix\n")
    stage_module.code_version.cache_clear()


def run_pipeline(store, config, engine, *, until: str = "publish") -> dict:
    out = {"extract": extract(store, RUN, config)}
    out["chunk"] = chunk(store, RUN, config, out["extract"])
    out["generate"] = [generate_shard(store, RUN, config, out["chunk"], s, engine=engine)
                       for s in range(out["chunk"].metrics.shards)]
    if until == "generate":
        return out
    out["validate"] = validate(store, RUN, config, out["generate"], out["chunk"])
    out["publish"] = publish(store, RUN, config, out["validate"], out["extract"], token=None)
    return out


def redone(before: dict, after: dict) -> list[str]:
    return [s for s in STAGES if s in before and s in after and before[s] != after[s]]


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(SAMPLE_DOCS / "apache-2.0.txt", folder)
    return folder


def test_publish_settings_and_code_keep_the_gpu_work(tmp_path, source, library, vllm_engine):
    store, engine = LocalStore(tmp_path / "store"), CountingEngine(vllm_engine)
    config = make_config(tmp_path, source=str(source), **LENIENT)
    first = run_pipeline(store, config, engine)
    assert engine.calls > 0
    engine.calls = 0

    again = run_pipeline(store, make_config(tmp_path, source=str(source), license="mit", **LENIENT), engine)
    assert redone(first, again) == ["publish"] and engine.calls == 0
    assert "mit" in (tmp_path / "store" / "d" / "manual__2026-12-04" / "publish" / "dataset" / "README.md").read_text()

    deploy(library, "publish/card.py")
    fixed = run_pipeline(store, make_config(tmp_path, source=str(source), license="mit", **LENIENT), engine)
    assert redone(again, fixed) == ["publish"] and engine.calls == 0

    # A new publish target is a new ledger target: extract and chunk read the ledger again, find the
    # same documents and write the same parts, so generate (keyed by their content) is reused.
    retarget = run_pipeline(store, make_config(tmp_path, source=str(source), hub_repo_id="acme/contracts",
                                               **LENIENT), engine, until="generate")
    assert retarget["generate"] == fixed["generate"] and engine.calls == 0
    assert retarget["extract"].content_sha256 == fixed["extract"].content_sha256


@pytest.mark.parametrize("change", ["temperature", "max_tokens", "prompt_template", "model_revision"])
def test_what_generation_depends_on_redoes_generate(tmp_path, source, library, vllm_engine, change):
    store, engine = LocalStore(tmp_path / "store"), CountingEngine(vllm_engine)
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    base = dict(source=str(source), model_id=str(model), max_tokens=64, **LENIENT)
    first = run_pipeline(store, make_config(tmp_path, **base), engine, until="generate")
    engine.calls = 0
    changed = dict(base)
    if change == "temperature":
        changed["temperature"] = 0.9
    elif change == "max_tokens":
        changed["max_tokens"] = 48
    elif change == "prompt_template":
        deploy(library, "format.py")
    else:  # a local model is keyed by the content of its folder
        (model / "NOTES.md").write_text("retrained\n")
    again = run_pipeline(store, make_config(tmp_path, **changed), engine, until="generate")
    assert engine.calls > 0 and again["generate"] != first["generate"]
    if change == "max_tokens":  # it sizes the chunks too (the prompt budget): chunk is redone
        assert again["chunk"].reuse_key != first["chunk"].reuse_key
    else:
        assert redone(first, again) == ["generate"]


def test_chunker_code_redoes_chunk_and_what_reads_it_when_chunks_change(tmp_path, source, library, vllm_engine):
    store, engine = LocalStore(tmp_path / "store"), CountingEngine(vllm_engine)
    config = make_config(tmp_path, source=str(source), **LENIENT)
    first = run_pipeline(store, config, engine, until="generate")
    engine.calls = 0
    deploy(library, "chunk/splitter.py")
    again = run_pipeline(store, config, engine, until="generate")
    assert again["chunk"].reuse_key != first["chunk"].reuse_key  # chunk redone with the new code
    assert again["extract"] == first["extract"]
    # The same chunks (this edit changes no cut): generate keeps its work; different chunks redo it.
    assert again["chunk"].content_sha256 == first["chunk"].content_sha256 and engine.calls == 0
    rechunked = run_pipeline(store, make_config(tmp_path, source=str(source), chunk_max_tokens=200, **LENIENT),
                             engine, until="generate")
    assert rechunked["chunk"].content_sha256 != first["chunk"].content_sha256 and engine.calls > 0
