"""Publish: the trainer-ready `messages` column, near-duplicate examples left out in append mode,
and the card's fine-tuning snippet and chunk filtering table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_publish import make_inputs

from bonito_tasks.contracts import EXAMPLES, ChunkMetrics, RunRef, sha256_hex
from bonito_tasks.publish import files as content
from bonito_tasks.publish import publish
from bonito_tasks.publish.history import readable
from bonito_tasks.publish.layout import PUBLISHED, Appended, append_indexed, with_messages
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore, parquet_bytes
from conftest import TINY_MODEL, make_config

RUN = RunRef(dag_id="d", run_id="r1")
PASSAGE = ("The harbour master keeps a register of every vessel that enters the port, with its tonnage, its cargo "
           "and the name of its captain. The register is open to the public on weekdays, and copies of older "
           "volumes are kept in the town archive, where historians use them to trace the trade of the region.")


def row(i: int, question: str, answer: str, chunk: str = "c1", run_id: str = "r1") -> dict:
    return {"example_id": sha256_hex(f"{run_id}-{i}"), "task_type": "exqa",
            "input": f"{PASSAGE}\n\nQuestion: {question}", "output": answer, "doc_id": sha256_hex("doc"),
            "chunk_id": chunk, "char_start": 0, "char_end": len(PASSAGE), "sample_index": i, "model_id": "m",
            "model_revision": "r", "sampling_params": "{}", "run_id": run_id}


def test_messages_pair_input_and_output():
    rows = pa.Table.from_pylist([row(0, "Who keeps the register?", "The harbour master"),
                                 row(1, "Where are old volumes?", "In the town archive")], schema=EXAMPLES)
    published = with_messages(rows)
    assert published.schema == PUBLISHED and published.column_names.index("messages") == 4
    assert published["messages"].to_pylist()[1] == [
        {"role": "user", "content": rows["input"][1].as_py()}, {"role": "assistant", "content": "In the town archive"}]
    assert with_messages(EXAMPLES.empty_table()).num_rows == 0


def test_the_published_folder_loads_with_messages_and_a_chat_template_reads_them(tmp_path):
    import datasets
    from transformers import AutoTokenizer

    store = LocalStore(tmp_path / "store")
    manifest = publish(store, RUN, make_config(tmp_path), *make_inputs(store), token=None)
    dataset = datasets.load_dataset(manifest.metrics.dataset_uri, split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.column_names == PUBLISHED.names
    first = dataset[0]
    assert first["messages"] == [{"role": "user", "content": first["input"]},
                                 {"role": "assistant", "content": first["output"]}]
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    text = tokenizer.apply_chat_template(first["messages"], chat_template=template, tokenize=False)
    assert text == f"<|user|>{first['input']}\n<|assistant|>{first['output']}\n"
    card = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/README.md").decode()
    assert "SFTTrainer(model=" in card and 'apply_chat_template(dataset[0]["messages"]' in card
    assert "| `messages` |" in card


def test_without_its_passage_a_new_question_on_a_published_passage_is_no_near_duplicate(tmp_path):
    """Rows whose passage is unknown are compared whole: the shared passage does not make a new
    question a repeat."""
    old = pa.Table.from_pylist([row(0, "Who keeps the register of every vessel?", "The harbour master")],
                               schema=EXAMPLES)
    _, published = append(Files({}), old, "r1", tmp_path, 0.9, passages={})
    new = pa.Table.from_pylist([row(2, "When is the register open to the public?", "On weekdays", run_id="r2")],
                               schema=EXAMPLES)
    appended, _ = append(Files(published), new, "r2", tmp_path, 0.9, passages={})
    assert (appended.skipped, appended.added) == (0, {"exqa": 1})


class Files:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.paths = list(files)

    def read(self, path: str) -> bytes:
        return self.files[path]


def test_a_dataset_published_before_the_index_is_indexed_once_and_its_shards_get_messages(tmp_path, caplog):
    old_rows = pa.Table.from_pylist([row(0, "Who keeps the register of every vessel?", "The harbour master")],
                                    schema=EXAMPLES)
    shard = "data/exqa/train-00000-of-00001.parquet"
    legacy = {shard: parquet_bytes(old_rows), "README.md": b"---\n---\n"}  # published before messages and the index
    new = pa.Table.from_pylist([
        row(1, "Who keeps the register of every vessel?", "The harbour master", run_id="r2"),  # the published pair
        row(2, "What does the register record?", "Tonnage, cargo and captain", run_id="r2"),
        row(3, "What does the register record ?", "Tonnage, cargo and captain", run_id="r2"),  # nearly row 2
    ], schema=EXAMPLES)
    caplog.set_level("INFO")
    appended, files = append(Files(legacy), new, "r2", tmp_path, 0.9)
    assert (appended.skipped, appended.near_duplicates, appended.added) == (2, 1, {"exqa": 1})
    assert pq.read_schema(pa.BufferReader(files[shard])).names == PUBLISHED.names  # rewritten once, with messages
    assert "indexing the published dataset once" in caplog.text
    assert [(s.task_type, s.rows) for s in appended.splits] == [("exqa", 2)]
    caplog.clear()
    again, _ = append(Files(legacy | files), new.slice(0, 1).set_column(
        0, "example_id", pa.array([sha256_hex("r3-2")])), "r3", tmp_path)
    assert again.skipped == 1 and "indexing" not in caplog.text  # the pair is found in the index, never re-indexed


def test_publish_counts_near_duplicates_and_the_card_lists_the_chunk_filters(tmp_path):
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store)
    chunks = StageWriter(store, RUN, "chunk")
    chunks.begin()
    chunks.commit(metrics=ChunkMetrics(
        chunks=7, documents=3, filtered={"too_few_words": 2, "boilerplate": 1}, duplicate_chunks=4,
        near_duplicate_chunks=3, earlier_run_duplicates=5))
    manifest = publish(store, RUN, make_config(tmp_path, publish_mode="append"), examples, documents, token=None)
    assert manifest.metrics.near_duplicates_skipped == 0 and manifest.metrics.duplicates_skipped == 0
    card = store.read_bytes(store.key(manifest.metrics.dataset_uri) + "/README.md").decode()
    assert "## Chunk filtering" in card and "| quality filter: `too_few_words` | 2 |" in card
    assert "| already generated from by an earlier run | 5 |" in card and "| of which near duplicates | 3 |" in card


def append(existing: Files, rows: pa.Table, tag: str, folder, threshold: float | None = None,
           part_rows: int = 2, passages: dict[str, str] | None = None) -> tuple[Appended, dict[str, bytes]]:
    """append_indexed over `rows` in parts of `part_rows` (passages: chunk c1's by default); also
    its files as bytes."""
    known = {"c1": PASSAGE} if passages is None else passages
    appended = append_indexed(existing, lambda: (rows.slice(i, part_rows) for i in range(0, rows.num_rows, part_rows)),
                              rows.num_rows, tag, 100, folder / tag, threshold, lambda part: known)
    return appended, {path: content.read(data) for path, data in appended.files.items()}


def test_an_indexed_append_finds_near_duplicates_of_published_rows_without_their_passage(tmp_path):
    """The same near-duplicates as above, found through the index of the published rows (sketches
    without the passage), and the old shards are never read."""
    first = pa.Table.from_pylist([row(0, "Who keeps the register of every vessel?", "The harbour master")],
                                 schema=EXAMPLES)
    _, published = append(Files({}), first, "r1", tmp_path, 0.9)
    reads: list[str] = []

    class Watched(Files):
        def read(self, path: str) -> bytes:
            reads.append(path)
            return super().read(path)

    new = pa.Table.from_pylist([
        row(1, "Who keeps the register of every vessel ?", "The harbour master", run_id="r2"),  # near: skipped
        row(2, "When is the register open to the public?", "On weekdays", run_id="r2"),  # same passage, new question
        row(3, "When is the register open to the public ?", "On weekdays.", run_id="r2"),  # repeats row 2
    ], schema=EXAMPLES)
    appended, files = append(Watched(published), new, "r2", tmp_path, 0.9)
    assert (appended.skipped, appended.near_duplicates) == (2, 2) and appended.added == {"exqa": 1}
    [kept] = pq.read_table(pa.BufferReader(files["data/exqa/train-r2-00000-of-00001.parquet"]))["input"].to_pylist()
    assert kept == min((r for r in new.to_pylist() if "open" in r["input"]), key=lambda r: r["example_id"])["input"]
    assert "open to the public" in kept
    assert not [p for p in reads if p.startswith("data/")]
    assert sorted(appended.files) == [".bonito/index/part-r2.parquet", ".bonito/stats.json",
                                      "data/exqa/train-r2-00000-of-00001.parquet"]
    assert [(s.task_type, s.rows) for s in appended.splits] == [("exqa", 2)]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_index_part_is_rebuilt_from_its_shards_never_skipped(damage, caplog, tmp_path):
    first = pa.Table.from_pylist([row(0, "Who keeps the register of every vessel?", "The harbour master")],
                                 schema=EXAMPLES)
    _, published = append(Files({}), first, "r1", tmp_path, 0.9)
    if damage == "missing":
        del published[".bonito/index/part-r1.parquet"]
    else:
        published[".bonito/index/part-r1.parquet"] = b"not parquet"
    again = pa.Table.from_pylist([row(1, "Who keeps the register of every vessel?", "The harbour master",
                                      run_id="r2")], schema=EXAMPLES)
    appended, files = append(Files(published), again, "r2", tmp_path)
    assert appended.skipped == 1 and appended.added == {}  # the duplicate did not slip through
    assert "rebuilding it from its 1 shard(s)" in caplog.text
    assert readable(files[".bonito/index/part-r1.parquet"])  # the commit repairs it


def test_an_indexed_append_writes_the_same_files_whatever_parts_the_night_comes_in(tmp_path):
    """The night is read a validate part at a time: one part or many give the same rows kept (the
    first of each example_id and pair, by example_id, across parts) and byte-identical files."""
    questions = ["Who keeps the register?", "When is it open?", "Where are old volumes?", "Who uses them?"]
    rows = [row(i, questions[i % 4], f"answer {i % 4}", run_id="r1") for i in range(12)]  # each pair 3 times
    rows += [dict(rows[0], output="another answer")]  # repeats row 0's example_id
    night = pa.Table.from_pylist(rows, schema=EXAMPLES)
    whole, whole_files = append(Files({}), night, "r1", tmp_path / "whole", part_rows=100)
    single, single_files = append(Files({}), night, "r1", tmp_path / "single", part_rows=1)
    assert whole_files == single_files and whole.added == single.added == {"exqa": 4}
    ids, pairs, expected = set(), set(), []
    for r in sorted(rows, key=lambda r: r["example_id"]):  # stable: row 0 before its repeat
        if r["example_id"] not in ids and (r["input"], r["output"]) not in pairs:
            expected.append(r["example_id"])
        ids.add(r["example_id"])
        pairs.add((r["input"], r["output"]))
    kept = pq.read_table(pa.BufferReader(whole_files["data/exqa/train-r1-00000-of-00001.parquet"]))
    assert kept["example_id"].to_pylist() == expected and "another answer" not in kept["output"].to_pylist()


@pytest.mark.parametrize("said", [2, 4])
def test_a_night_holding_other_than_the_rows_its_manifest_lists_is_refused(tmp_path, said):
    """The night's keys are filled into arrays sized from the manifest's row count: a validate part
    with more or fewer rows than listed is an error, never rows silently dropped or left unchecked."""
    night = pa.Table.from_pylist([row(i, f"Question {i}?", f"answer {i}") for i in range(3)], schema=EXAMPLES)
    with pytest.raises(ValueError, match=f"not the {said} it was said to hold|more than the {said} rows"):
        append_indexed(Files({}), lambda: [night], said, "r1", 100, tmp_path, 0.9)
