"""The card's split sizes are what `datasets` computes for the same files (publish/layout.py): a
copy of the published folder without its card, loaded by `datasets`, reports the card's
num_bytes for every config. (Rows sorted by example_id come out of `take`, whose string buffers
hold slack that `Table.nbytes` counted and `datasets` does not.)"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.compute as pc
from test_publish import front_matter, published  # noqa: F401 - the fixture

from bonito_tasks.contracts import EXAMPLES
from bonito_tasks.publish.layout import task_splits, with_messages


def test_the_cards_num_bytes_are_what_datasets_computes(published, tmp_path):  # noqa: F811
    import datasets

    store, manifest, _ = published
    folder = tmp_path / "dataset"
    shutil.copytree(manifest.metrics.dataset_uri, folder)
    card = front_matter((folder / "README.md").read_text())
    (folder / "README.md").unlink()
    sizes = {info["config_name"]: info["splits"][0]["num_bytes"] for info in card["dataset_info"]}
    configs = [("default", "data/*/*.parquet"), ("exqa", "data/exqa/*.parquet"), ("qa", "data/qa/*.parquet")]
    for config, files in configs:
        loaded = datasets.load_dataset("parquet", data_files={"train": str(folder / files)},
                                       cache_dir=str(tmp_path / f"cache-{config}"))
        assert sizes[config] == loaded["train"].info.splits["train"].num_bytes, config


def test_a_split_of_several_shards_is_sized_as_datasets_sizes_it(tmp_path):
    import datasets

    rows = [{"example_id": f"ex-{i}", "task_type": "exqa" if i % 3 else "qa", "input": "x" * (i % 17),
             "output": "y", "doc_id": "d", "chunk_id": f"c-{i}", "char_start": 0, "char_end": 1, "sample_index": 0,
             "model_id": "m", "model_revision": "r", "sampling_params": "{}", "run_id": "run"} for i in range(500)]
    table = pa.Table.from_pylist(rows, schema=EXAMPLES)
    split = task_splits(table, rows_per_shard=100)[0]
    assert split.task_type == "exqa" and len(split.shards) == 4
    for path, data in split.shards.items():
        (tmp_path / "data" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / path).write_bytes(data)
    loaded = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "data" / "data/exqa/*.parquet")},
                                   cache_dir=str(tmp_path / "cache"))
    assert split.num_bytes == loaded["train"].info.splits["train"].num_bytes
    sorted_rows = with_messages(table.filter(pc.equal(table["task_type"], "exqa")).sort_by("example_id"))
    assert split.num_bytes < sorted_rows.nbytes  # what the card said before: the slack of take()
