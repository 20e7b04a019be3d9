"""Paging a table spread over many parts (bonito_tasks.browse): with the counts a stage recorded, an
unfiltered page reads only the parts that hold it and still gives the same rows, total and counts
as a scan of every part."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bonito_tasks import browse
from bonito_tasks.contracts import DROPPED_GENERATIONS, GenerateMetrics, RunRef
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore

RUN = RunRef(dag_id="bonito_dataset", run_id="r1")
SHARDS, ROWS = 6, 10


class CountingStore(LocalStore):
    """A local store that records which parts were opened (a real store otherwise)."""

    def __init__(self, root):
        super().__init__(root)
        self.opened: list[str] = []

    def open_read(self, key):
        self.opened.append(key)
        return super().open_read(key)


@pytest.fixture
def store(tmp_path):
    store = CountingStore(tmp_path / "store")
    for shard in range(SHARDS):
        writer = StageWriter(store, RUN, "generate", partition=shard)
        writer.begin()
        writer.add("dropped_generations", pa.Table.from_pylist(
            [{"chunk_id": f"{shard}-{i}", "task_type": "exqa", "sample_index": 0,
              "reason": "no_pipe" if i % 3 else "extra_pipe", "generated_text": f"text {shard}-{i}"}
             for i in range(ROWS)], DROPPED_GENERATIONS))
        writer.commit(metrics=GenerateMetrics(prompts=ROWS, generations=ROWS))
    return store


def recorded() -> dict[str, int]:
    extra = SHARDS * len(range(0, ROWS, 3))
    return {"no_pipe": SHARDS * ROWS - extra, "extra_pipe": extra}


@pytest.mark.parametrize("offset", [0, 15, 55])
def test_recorded_counts_give_the_same_page_reading_only_its_parts(store, offset):
    scanned = browse.read_page(store, RUN, "dropped_generations", offset=offset, limit=8)
    store.opened.clear()
    paged = browse.read_page(store, RUN, "dropped_generations", offset=offset, limit=8, known_counts=recorded())
    assert paged.rows == scanned.rows and len(paged.rows) == min(8, SHARDS * ROWS - offset)
    assert [r["chunk_id"] for r in paged.rows][0] == f"{offset // ROWS}-{offset % ROWS}"
    assert (paged.total, paged.facet_counts) == (scanned.total, scanned.facet_counts) == (SHARDS * ROWS, recorded())
    if offset == 0:  # the first part holds the page: its footer and its rows, and no other part
        assert {key.split("/")[-2] for key in store.opened} == {"shard-00000"}


def test_a_filtered_page_still_counts_every_part(store):
    store.opened.clear()
    page = browse.read_page(store, RUN, "dropped_generations", value="extra_pipe", limit=100,
                            known_counts=recorded())
    assert page.total == recorded()["extra_pipe"] == len(page.rows)
    assert {r["reason"] for r in page.rows} == {"extra_pipe"}
    assert len({key.split("/")[-2] for key in store.opened}) == SHARDS


def test_generate_metrics_count_dropped_rows_by_reason():
    metrics = GenerateMetrics(prompts=10, generations=20, parse_failures={"no_pipe": 3}, duplicates_dropped=2,
                              prompts_too_long=1)
    assert metrics.dropped_by_reason == {"no_pipe": 3, "duplicate": 2, "prompt_too_long": 2}  # n=2 samples
    assert GenerateMetrics().dropped_by_reason == {}
