"""plan_shards and update_ledger as the night grows (issue #21): peak RSS and wall at S and 10·S chunks.

    .venv/bin/python benchmarks/plan_ledger_bench.py                 # S = 32,230 chunks (96,690 examples / 3)
    .venv/bin/python benchmarks/plan_ledger_bench.py --chunks 5000   # a quick look

Synthetic inputs, written straight to a local store (no extract, no tokenizer): chunk partitions of
`--partition-chunks` chunks of about 2,000 random characters, in parts of 2,048 with random MinHash
signatures (about 1% exact duplicates and 1% near-duplicates, so every path of the plan runs), and
a documents table of one document per 10 chunks. Each task then runs in a fresh process, as the
executor runs it: plan_shards, and the ledger task's calls (update_ledger, then record_signatures).
Printed per size and task: wall time and peak RSS (VmHWM); then the 10·S / S ratios (targets:
RSS <= 1.25x and <= 1 GiB at 10·S). Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
MODEL = str(REPO_ROOT / "tests/assets/tiny-bonito")
TASK_TYPES = ["exqa", "ynqa", "qg"]
CHUNKS_PER_DOC = 10
TEXT_CHARS = 2000


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def config_for(root: Path):
    from bonito_tasks.config import RunConfig

    return RunConfig(source=str(root / "unused"), store=str(root / "store"), model_id=MODEL,
                     task_types=TASK_TYPES, chunk_shard_size=20_000)


def build(root: Path, chunks: int, partition_chunks: int):
    """Chunk partitions and a documents table for `chunks` chunks; returns (documents, partitions)."""
    import numpy as np
    import pyarrow as pa

    from bonito_tasks import minhash
    from bonito_tasks.chunk import PART_ROWS, neardup
    from bonito_tasks.contracts import CHUNKS, ChunkMetrics, ExtractMetrics, RunRef, StageName
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import LocalStore

    store, run = LocalStore(root / "store"), RunRef(dag_id="bench", run_id="night")
    rng = np.random.default_rng(7)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz      ", dtype=np.uint8)
    doc_ids = [hashlib.sha256(str(d).encode()).hexdigest() for d in range(-(-chunks // CHUNKS_PER_DOC))]
    partitions, made = [], 0
    for partition in range(-(-chunks // partition_chunks)):
        writer = StageWriter(store, run, StageName.CHUNK, partition)
        count = min(partition_chunks, chunks - made)
        for start in range(0, count, PART_ROWS):
            n = min(PART_ROWS, count - start)
            data = letters[rng.integers(0, len(letters), n * TEXT_CHARS)]
            sigs = rng.integers(0, 2**32, (n, minhash.NUM_PERM), dtype=np.uint32)
            # 1% exact duplicates of the row before, 1% near-duplicates (a tenth of the signature redrawn)
            for i in range(1, n, 100):
                data[i * TEXT_CHARS:(i + 1) * TEXT_CHARS] = data[(i - 1) * TEXT_CHARS:i * TEXT_CHARS]
                sigs[i] = sigs[i - 1]
            for i in range(2, n, 100):
                sigs[i] = sigs[i - 2]
                sigs[i, :10] = rng.integers(0, 2**32, 10, dtype=np.uint32)
            offsets = np.arange(n + 1, dtype=np.int64) * TEXT_CHARS
            text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))
            rows = made + start + np.arange(n)
            doc = [doc_ids[r // CHUNKS_PER_DOC] for r in rows.tolist()]
            span = (rows % CHUNKS_PER_DOC) * TEXT_CHARS
            ids = [hashlib.sha256(f"{d}:{s}".encode()).hexdigest() for d, s in zip(doc, span.tolist())]
            writer.add("chunks", pa.table({
                "chunk_id": ids, "doc_id": doc, "chunk_index": (rows % CHUNKS_PER_DOC).astype(np.int32),
                "char_start": span, "char_end": span + TEXT_CHARS, "n_tokens": np.full(n, 400, np.int32),
                "text": text, "page": pa.nulls(n, pa.int32()),
                "pending_task_types": pa.nulls(n, pa.list_(pa.string())),
                "also_in": pa.array([[]] * n, CHUNKS.field("also_in").type)}))
            writer.add("chunk_signatures", neardup.chunk_signatures_table(ids, sigs, [None] * n))
        made += count
        partitions.append(writer.commit(ChunkMetrics(documents=count // CHUNKS_PER_DOC)))
    writer = StageWriter(store, run, StageName.EXTRACT)
    for start in range(0, len(doc_ids), 10_000):
        ids = doc_ids[start:start + 10_000]
        n = len(ids)
        writer.add("documents", pa.table({
            "doc_id": ids, "source_uri": [f"file:///corpus/doc-{start + i:06d}.txt" for i in range(n)],
            "media_type": ["text/plain"] * n, "size_bytes": np.full(n, 20_480), "text": pa.array([""] * n),
            "page_starts": pa.nulls(n, pa.list_(pa.int64())),
            "pending_task_types": pa.array([None if i % 7 else ["ynqa"] for i in range(n)], pa.list_(pa.string()))}))
    documents = writer.commit(ExtractMetrics(partitions=len(partitions)))
    return documents, partitions


def plan_task(root: Path, partitions):
    from bonito_tasks.chunk import plan_shards
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.store import LocalStore

    started = time.perf_counter()
    manifest = plan_shards(LocalStore(root / "store"), RunRef(dag_id="bench", run_id="night"), config_for(root),
                           partitions)
    return time.perf_counter() - started, peak_rss_mib(), manifest.metrics.chunks


def ledger_task(root: Path, documents):
    from bonito_tasks.chunk.neardup import record_signatures
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.ledger import update_ledger
    from bonito_tasks.store import LocalStore

    store, run, config = LocalStore(root / "store"), RunRef(dag_id="bench", run_id="night"), config_for(root)
    started = time.perf_counter()
    result = update_ledger(store, run, documents, config)
    record_signatures(store, run, config)
    return time.perf_counter() - started, peak_rss_mib(), result.recorded


def measure(chunks: int, partition_chunks: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bonito-plan-") as tmp:
        root = Path(tmp)
        documents, partitions = build(root, chunks, partition_chunks)
        figures = {}
        for name, task, arg in (("plan_shards", plan_task, partitions), ("update_ledger", ledger_task, documents)):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                wall, rss, rows = pool.submit(task, root, arg).result()
            figures[name] = {"wall_s": round(wall, 2), "rss_mib": round(rss), "rows": rows}
            print(f"{chunks:>9,} chunks  {name:<14} {wall:7.2f} s  {rss:6.0f} MiB  ({rows:,} rows)", flush=True)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=32_230, help="S: chunks of the small night (10·S too)")
    parser.add_argument("--partition-chunks", type=int, default=4096, help="chunks per chunk partition")
    args = parser.parse_args()
    small, large = measure(args.chunks, args.partition_chunks), measure(10 * args.chunks, args.partition_chunks)
    ratios = {task: {"rss_ratio": round(large[task]["rss_mib"] / small[task]["rss_mib"], 2),
                     "wall_ratio": round(large[task]["wall_s"] / small[task]["wall_s"], 2)} for task in small}
    for task, r in ratios.items():
        print(f"{task:<14} 10·S / S: RSS {r['rss_ratio']:.2f}x, wall {r['wall_ratio']:.2f}x")
    print(json.dumps({"S": small, "10S": large, "ratios": ratios}))


if __name__ == "__main__":
    main()
