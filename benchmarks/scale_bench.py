"""Scale-out figures, each measured in this one run (not a test):

    .venv/bin/python benchmarks/scale_bench.py [--text-mb 48] [--chunks 16000] [--skip-generate]

1. chunking vs a raw batch `tokenizer(paragraphs)` call on the same text, same process (target >= 0.9);
2. extract + chunk wall time of a generated corpus with 1 and with 2 partitions, the partitions'
   tasks run by a process pool with 2 worker slots (the stage functions the mapped Airflow tasks
   call), and the speedup (target >= 1.6x on 2 cores); peak RSS of every task;
3. engine start as a share of generate wall time with the old fixed sizing (500 chunks per shard)
   vs `auto` sized from the fixed run's figures, as the next nightly run would be (tiny model on
   vLLM's CPU build; target <= 10% with auto); each shard is a task in a fresh process;
4. a projection: hours per stage for a corpus and a fleet, from the rates measured above and the
   GPU generation speed given (--gpu-tokens-per-s; vLLM cannot run on the lent GPU here).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MODEL = str(REPO / "tests/assets/tiny-bonito")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_text_corpus(folder: Path, megabytes: int) -> int:
    from extract_bench import word_pool

    folder.mkdir(parents=True)
    pool = word_pool(megabytes * 2**20 + 2**20, seed=7)
    size = 2 * 2**20
    for i in range(megabytes // 2):
        start = pool.index("\n\n", i * size) + 2
        (folder / f"doc-{i:04d}.txt").write_text(f"Document {i}.\n\n" + pool[start:start + size])
    return sum(p.stat().st_size for p in folder.iterdir())


# ---- 1. the chunker against raw batch tokenization


def chunker_ratio(text_mb: int) -> tuple[float, float, float]:
    from extract_bench import word_pool

    from bonito_tasks.chunk import Chunker, load_tokenizer
    from bonito_tasks.config import RunConfig

    config = RunConfig(source="/unused", store="/unused", model_id=MODEL)
    tokenizer = load_tokenizer(config)
    texts = [word_pool(2**20, seed=s) for s in range(text_mb)]
    paragraphs = [p for t in texts for p in t.split("\n\n")]
    megabytes = sum(map(len, texts)) / 1e6
    best_raw = best_chunk = math.inf
    for _ in range(2):  # alternate, best of each: the machine is shared and noisy
        started = time.perf_counter()
        for first in range(0, len(paragraphs), 4096):
            tokenizer(paragraphs[first:first + 4096], add_special_tokens=False, return_attention_mask=False)
        best_raw = min(best_raw, time.perf_counter() - started)
        chunker = Chunker(tokenizer, config.chunk_max_tokens, config.chunk_overlap_tokens)
        started = time.perf_counter()
        if hasattr(chunker, "split_many"):
            chunker.split_many(texts)
        else:
            for text in texts:
                chunker.split_counted(text)
        best_chunk = min(best_chunk, time.perf_counter() - started)
    return megabytes / best_raw, megabytes / best_chunk, best_raw / best_chunk


# ---- 2. extract + chunk with 1 and 2 partitions under 2 worker slots


def _task(name: str, *args):
    """One mapped task in a worker process: returns (manifest, seconds, peak RSS MiB of the worker)."""
    from bonito_tasks import chunk as chunk_stage
    from bonito_tasks import extract as extract_stage

    started = time.perf_counter()
    manifest = {"extract": extract_stage.extract_partition, "chunk": chunk_stage.chunk_partition}[name](*args)
    return manifest, time.perf_counter() - started, peak_rss_mb()


def extract_and_chunk(source: Path, store_root: Path, partitions: int, source_bytes: int) -> dict:
    from bonito_tasks.chunk import plan_shards
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.extract import collect_documents
    from bonito_tasks.extract.plan import plan
    from bonito_tasks.store import LocalStore

    config = RunConfig(source=str(source), store=str(store_root), model_id=MODEL, full_refresh=True,
                       partition_bytes=math.ceil(source_bytes / partitions), chunk_shard_size=500)
    store, run = LocalStore(store_root), RunRef(dag_id="bench", run_id=f"p{partitions}")
    rss, phases = [], {}
    started = time.perf_counter()
    planned = plan(store, run, config)
    phases["plan"] = time.perf_counter() - started
    # Two worker slots in fresh processes ("spawn": a forked child of a process that has used the
    # tokenizer's thread pool deadlocks, and Airflow's workers start tasks in fresh processes too).
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        mark = time.perf_counter()
        done = [f.result() for f in [pool.submit(_task, "extract", store, run, config, planned, p)
                                     for p in range(planned.metrics.partitions)]]
        rss += [r for _, _, r in done]
        phases["extract tasks"], mark = time.perf_counter() - mark, time.perf_counter()
        documents = collect_documents(store, run, config, [m for m, _, _ in done])
        phases["collect_documents"], mark = time.perf_counter() - mark, time.perf_counter()
        done = [f.result() for f in [pool.submit(_task, "chunk", store, run, config, documents, p)
                                     for p in range(planned.metrics.partitions)]]
        rss += [r for _, _, r in done]
        phases["chunk tasks"], mark = time.perf_counter() - mark, time.perf_counter()
    chunks = plan_shards(store, run, config, [m for m, _, _ in done])
    phases["plan_shards"] = time.perf_counter() - mark
    wall = time.perf_counter() - started
    return {"wall_s": wall, "partitions": planned.metrics.partitions, "chunks": chunks.metrics.chunks,
            "peak_rss_mb": max(rss), "documents": documents.metrics.documents, "phases": phases}


# ---- 3. engine start share: fixed vs auto shard sizing


def _generate_task(store, run, config, chunks, shard: int):
    """One generate task in a fresh process, as Airflow runs it (vLLM imported and started there,
    its engine core in the task process as the operator sets it under Airflow's supervisor)."""
    from bonito_tasks.generate.run import generate_shard

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    return generate_shard(store, run, config, chunks, shard).metrics


def engine_share(tmp: Path, n_chunks: int) -> dict:
    """The same corpus of `n_chunks` chunks planned two ways. Fixed: shards of 500 chunks (the old
    default). Auto: as the next nightly run sizes them, from the figures the fixed run recorded.
    The shards of one plan are alike, so the first shard of each is run (a task of its own, in a
    fresh process) and its engine start is reported as a share of its wall time."""
    import pyarrow as pa

    from bonito_tasks.chunk import plan_shards
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import CHUNKS, ChunkMetrics, RunRef, sha256_hex
    from bonito_tasks.figures import record_figures
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import LocalStore

    text = (REPO / "tests/assets/sample_docs/apache-2.0.txt").read_text()
    paragraphs = [p for p in text.split("\n\n") if len(p.split()) > 20]
    rows = [{"chunk_id": sha256_hex(f"c{i}"), "doc_id": sha256_hex(f"d{i}"), "chunk_index": 0, "char_start": 0,
             "char_end": len(paragraphs[i % len(paragraphs)]), "n_tokens": 1,
             "text": f"{i}. " + paragraphs[i % len(paragraphs)], "page": None, "also_in": []}
            for i in range(n_chunks)]
    store = LocalStore(tmp / "share")
    results, fixed_metrics = {}, None
    for label, shard_size in (("fixed 500", 500), ("auto", None)):
        run = RunRef(dag_id="bench", run_id=label.replace(" ", "-"))
        config = RunConfig(source="/unused", store=str(store.root), model_id=MODEL, dtype="float32",
                           task_types=["exqa"], chunk_shard_size=shard_size, near_dup_threshold=None)
        if fixed_metrics is not None:  # the fixed run's figures, as its summarize task records them
            record_figures(store, RunRef(dag_id="bench", run_id="fixed-500"), config, [fixed_metrics])
        writer = StageWriter(store, run, "chunk", 0)
        writer.begin()
        for first in range(0, n_chunks, 2048):
            writer.add("chunks", pa.Table.from_pylist(rows[first:first + 2048], CHUNKS))
        partition = writer.commit(metrics=ChunkMetrics(chunks=n_chunks))
        chunks = plan_shards(store, run, config, [partition])
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            metrics = pool.submit(_generate_task, store, run, config, chunks, 0).result()
        fixed_metrics = fixed_metrics or metrics
        results[label] = {"shards": chunks.metrics.shards, "shard_size": chunks.metrics.shard_size,
                          "chunks": metrics.prompts, "engine_start_s": metrics.engine_start_s,
                          "wall_s": metrics.attempt_wall_s, "share": metrics.engine_start_s / metrics.attempt_wall_s}
    return results


# ---- 4. projection


def projection(extract_chunk_mb_s: float, plan_shards_chunks_s: float, args) -> list[tuple[str, float]]:
    """Hours per stage, the rows of docs/scale.md's plan; stages of one kind share the fleet (CPU
    stages the workers, generate the GPUs); plan_shards is one task."""
    text_mb = args.corpus_gb * 1000
    generations = args.chunks_m * 1e6 * args.task_types
    tokens = generations * args.output_tokens
    return [
        ("extract + chunk, text (CPU)", text_mb / (extract_chunk_mb_s * args.cpu_workers) / 3600),
        ("plan_shards (one task)", args.chunks_m * 1e6 / plan_shards_chunks_s / 3600),
        ("extract, PDF pages (CPU)", args.pages_m * 1e6 / (args.pages_per_s * args.cpu_workers) / 3600),
        ("generate (GPU)", tokens / (args.gpu_tokens_per_s * args.gpus) / 3600
         + args.engine_start_s * args.shards_per_gpu / 3600),
        ("validate (CPU, one task)", generations / args.validate_rows_per_s / 3600),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=int, default=48, help="generated text corpus for the partition timing")
    parser.add_argument("--ratio-mb", type=int, default=8, help="text for the chunker vs tokenizer ratio")
    parser.add_argument("--chunks", type=int, default=16000,
                        help="chunks for the engine-start share (auto needs a corpus of at least one long shard)")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--corpus-gb", type=float, default=20, help="projection: GB of extracted text")
    parser.add_argument("--chunks-m", type=float, default=5, help="projection: millions of chunks")
    parser.add_argument("--pages-m", type=float, default=5, help="projection: millions of PDF pages")
    parser.add_argument("--pages-per-s", type=float, default=150, help="PDF pages/s per core (extract_bench)")
    parser.add_argument("--task-types", type=int, default=3)
    parser.add_argument("--output-tokens", type=int, default=150)
    parser.add_argument("--cpu-workers", type=int, default=32)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-tokens-per-s", type=float, default=10_000, help="bonito-v1 on vLLM, per GPU")
    parser.add_argument("--engine-start-s", type=float, default=60, help="7B engine start on a GPU")
    parser.add_argument("--shards-per-gpu", type=float, default=1)
    parser.add_argument("--validate-rows-per-s", type=float, default=100_000, help="validate_bench's figure")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # As on the deployment's workers (docker-compose.yaml): one task per worker slot, one thread per task.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    raw, chunked, ratio = chunker_ratio(args.ratio_mb)
    print(f"1. chunking {args.ratio_mb} MB: raw batch tokenizer {raw:.2f} MB/s, chunker {chunked:.2f} MB/s, "
          f"ratio {ratio:.2f} (target >= 0.9)")

    with tempfile.TemporaryDirectory(prefix="bonito-scale-") as tmp:
        tmp = Path(tmp)
        source_bytes = make_text_corpus(tmp / "corpus", args.text_mb)
        one = extract_and_chunk(tmp / "corpus", tmp / "store1", 1, source_bytes)
        two = extract_and_chunk(tmp / "corpus", tmp / "store2", 2, source_bytes)
        assert one["chunks"] == two["chunks"] and one["documents"] == two["documents"]
        mb = source_bytes / 1e6
        print(f"2. extract + chunk of {mb:.0f} MB ({one['documents']} documents, {one['chunks']} chunks), "
              f"2 worker slots: 1 partition {one['wall_s']:.1f} s, 2 partitions {two['wall_s']:.1f} s, "
              f"speedup {one['wall_s'] / two['wall_s']:.2f}x (target >= 1.6x)")
        for result in (one, two):
            print(f"   {result['partitions']} partition(s): " + ", ".join(
                f"{name} {seconds:.1f} s" for name, seconds in result["phases"].items()))
        print(f"   peak RSS per task: {one['peak_rss_mb']:.0f} MiB (1 partition), {two['peak_rss_mb']:.0f} MiB "
              f"(2 partitions) (target <= 1024 MiB)")
        if not args.skip_generate:
            shares = engine_share(tmp, args.chunks)
            for label, r in shares.items():
                print(f"3. engine start, {label}: {args.chunks} chunks in {r['shards']} shard(s) of {r['shard_size']}; "
                      f"its first shard ({r['chunks']} chunks): {r['engine_start_s']:.1f} s of {r['wall_s']:.1f} s "
                      f"= {100 * r['share']:.1f}% of generate wall time"
                      + (" (target <= 10%)" if label == "auto" else ""))

    rate = mb / one["wall_s"]  # extract + chunk MB/s on one worker slot (one partition: one task at a time)
    plan_rate = one["chunks"] / one["phases"]["plan_shards"]  # chunks/s of the one plan_shards task
    print(f"4. projection: {args.corpus_gb:g} GB of text, {args.chunks_m:g}M chunks x {args.task_types} task types x "
          f"{args.output_tokens} output tokens = {args.chunks_m * args.task_types * args.output_tokens / 1000:g}B "
          f"tokens; {args.cpu_workers} CPU workers, {args.gpus} GPUs at {args.gpu_tokens_per_s:g} tok/s each")
    print("   stage                               hours")
    rows = projection(rate, plan_rate, args)
    for stage, hours in rows:
        print(f"   {stage:<36}{hours:6.2f}")
    print(f"   total (stages one after the other)  {sum(h for _, h in rows):6.2f}  "
          f"(extract + chunk at {rate:.2f} MB/s per worker slot, plan_shards at {plan_rate:,.0f} chunks/s, "
          "measured above)")


if __name__ == "__main__":
    main()
