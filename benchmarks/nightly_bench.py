"""A night's append against a published history of H and 10·H rows: is its cost flat in the history?

    .venv/bin/python benchmarks/nightly_bench.py                       # H = 200,000, 10·H = 2,000,000
    .venv/bin/python benchmarks/nightly_bench.py --history 20000 --night 2000   # a quick look

For each history size, the dataset is seeded into the loopback Hub stand-in the tests use
(tests/hub_server.py): real data shards plus the index and stats an append keeps
(bonito_tasks/publish/history.py), built night by night. Then one night of `--night` rows (a
tenth of them repeats of published rows) is published with `publish_mode=append` by the real
publish stage, in a fresh process (its own peak RSS), through huggingface_hub over HTTP. Printed
per size: publish wall time, peak RSS, bytes the server sent (what the night read from the
target), per history row, and the files the commit touched; then the 10·H / H ratios and one JSON
line. Targets (issue #21): RSS ratio <= 1.3, wall ratio <= 2.0, <= 128 bytes read per history row
at 10·H, existing data shards untouched. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT)]
REPO_ID = "bench/nightly"
SEED_NIGHT = 200_000  # rows per seeded night (each built like an append)
TASK_TYPES = ("exqa", "ynqa", "qa")


def rows(first: int, n: int, run_id: str, repeat_from: int | None = None):
    """n example rows; with repeat_from, the first tenth repeat published rows (same id and text)."""
    import pyarrow as pa

    from bonito_tasks.contracts import EXAMPLES, canonical_json, sha256_hex

    sampling = canonical_json({"max_tokens": 256, "n": 1, "temperature": 0.5, "top_p": 0.95})
    ids = list(range(first, first + n))
    if repeat_from is not None:
        ids[: n // 10] = range(repeat_from, repeat_from + n // 10)
    return pa.Table.from_pylist([{
        "example_id": sha256_hex(f"example-{i}"), "task_type": TASK_TYPES[i % 3],
        "input": f"Passage {i // 4} of the contract.\n\nQuestion {i}: what does clause {i % 97} of section {i} say?",
        "output": f"Clause {i % 97} of section {i} sets term {i * 7 % 1013}.", "doc_id": sha256_hex(f"doc-{i // 40}"),
        "chunk_id": sha256_hex(f"chunk-{i // 4}"), "char_start": 0, "char_end": 30, "sample_index": 0,
        "model_id": "BatsResearch/bonito-v1", "model_revision": "abc123", "sampling_params": sampling,
        "run_id": run_id} for i in ids], schema=EXAMPLES)


def seed_history(history_rows: int) -> dict[str, bytes]:
    """The files of a dataset that `history_rows` rows were appended to, SEED_NIGHT at a time."""
    import pyarrow as pa

    from bonito_tasks.publish.layout import SOURCE_COLUMNS, append_indexed

    class Files:
        def __init__(self, files: dict[str, bytes]):
            self.files, self.paths = files, sorted(files)

        def read(self, path: str) -> bytes:
            return self.files[path]

    files: dict[str, bytes] = {}
    sources = pa.table({c: pa.array([], t) for c, t in zip(SOURCE_COLUMNS, (pa.string(),) * 3 + (pa.int64(),))})
    for night, first in enumerate(range(0, history_rows, SEED_NIGHT)):
        tag = f"seed-{night:04d}"
        batch = rows(first, min(SEED_NIGHT, history_rows - first), tag)
        files |= append_indexed(Files(files), batch, sources, tag, 100_000, 0.9).files
    return files


def night_worker(endpoint: str, token: str, night: int, history_rows: int, out: str) -> None:
    """Publish one night (append) as the publish task does; write wall time and peak RSS to `out`."""
    import pyarrow as pa

    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import (
        DOCUMENTS,
        EXAMPLES,
        ExtractMetrics,
        QualitySummary,
        RunRef,
        SuiteRef,
        ValidateMetrics,
    )
    from bonito_tasks.publish import publish
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store, run = LocalStore(Path(tmp) / "store"), RunRef(dag_id="bench", run_id="scheduled__tonight")
        new = rows(history_rows, night, run.run_id, repeat_from=history_rows - night)
        docs = [{"doc_id": d, "source_uri": f"s3://docs/{d[:8]}.pdf", "media_type": "application/pdf",
                 "size_bytes": 1000, "text": "text", "page_starts": None}
                for d in sorted(set(new["doc_id"].to_pylist()))]
        extract, validate = StageWriter(store, run, "extract"), StageWriter(store, run, "validate")
        extract.add("documents", pa.Table.from_pylist(docs, schema=DOCUMENTS))
        validate.add("examples", new.cast(EXAMPLES))
        suite = SuiteRef(name="examples", dataset_suite="dataset", version="1")
        examples = validate.commit(metrics=ValidateMetrics(suite=suite, quality=QualitySummary()))
        documents = extract.commit(metrics=ExtractMetrics())
        config = RunConfig(source="s3://docs/", store=tmp, hub_repo_id=REPO_ID, publish_mode="append")
        started = time.perf_counter()
        manifest = publish(store, run, config, examples, documents, token, endpoint=endpoint)
        wall = time.perf_counter() - started
        assert manifest.metrics.examples_added == night - night // 10, manifest.metrics
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    Path(out).write_text(json.dumps({"wall_s": wall, "rss_mib": peak_kib / 1024}))


def measure(history_rows: int, night: int) -> dict:
    sys.path[:0] = [str(REPO_ROOT / "tests")]
    from hub_server import HubServer

    started = time.perf_counter()
    files = seed_history(history_rows)
    seed_s = time.perf_counter() - started
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        hub.seed(REPO_ID, files)
        before = dict(hub.repo(REPO_ID).resolve("main").files)
        out = str(Path(tmp) / "night.json")
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(Path(tmp) / "hf")}
        subprocess.run([sys.executable, __file__, "--worker", hub.url, hub.token, str(night), str(history_rows), out],
                       check=True, env=env)
        result = json.loads(Path(out).read_text())
        after = hub.repo(REPO_ID).resolve("main").files
        read = sum(size for method, _, size in hub.sent if method == "GET")
        touched = sorted(p for p in after if before.get(p) != after[p])
        untouched = all(after.get(p) == data for p, data in before.items() if p.startswith("data/"))
    return {**result, "history_rows": history_rows, "read_bytes": read, "read_per_row": read / history_rows,
            "files_touched": touched, "data_shards_untouched": untouched, "seed_s": seed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=200_000, help="H: published rows (10·H is measured too)")
    parser.add_argument("--night", type=int, default=5_000, help="rows the measured night publishes")
    args = parser.parse_args()
    small, large = measure(args.history, args.night), measure(10 * args.history, args.night)
    for m in (small, large):
        print(f"history {m['history_rows']:>10,} rows: append of {args.night:,} rows {m['wall_s']:6.2f} s, "
              f"peak RSS {m['rss_mib']:6.0f} MiB, read {m['read_bytes'] / 2**20:7.1f} MiB "
              f"({m['read_per_row']:.1f} B per history row), commit touched {len(m['files_touched'])} files, "
              f"existing data shards untouched: {m['data_shards_untouched']} (history built in {m['seed_s']:.0f} s)")
    print("  files the large night's commit touched:", ", ".join(large["files_touched"]))
    ratios = {"append_wall_ratio": large["wall_s"] / small["wall_s"],
              "append_rss_ratio": large["rss_mib"] / small["rss_mib"]}
    print(f"10·H / H: wall {ratios['append_wall_ratio']:.2f}x (target <= 2.0), "
          f"peak RSS {ratios['append_rss_ratio']:.2f}x (target <= 1.3); "
          f"bytes read per history row at 10·H: {large['read_per_row']:.1f} (target <= 128)")
    print(json.dumps({**{k: round(v, 3) for k, v in ratios.items()},
                      "append_read_bytes_per_history_row": round(large["read_per_row"], 1),
                      "append_wall_s_large": round(large["wall_s"], 2), "append_rss_mib_large": round(large["rss_mib"]),
                      "history_rows_large": large["history_rows"], "night_rows": args.night,
                      "data_shards_untouched": small["data_shards_untouched"] and large["data_shards_untouched"]}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        night_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
