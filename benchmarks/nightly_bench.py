"""Nightly at scale (issue #21): is a night's cost flat in the night's size and in the history?

    .venv/bin/python benchmarks/nightly_bench.py            # S = 100,000 and 10·S = 1,000,000 examples; H = 200,000
    .venv/bin/python benchmarks/nightly_bench.py --night-examples 3000 --partition-mb 0.25 --shard-chunks 500 \
        --publish-shard-rows 1500 --history 20000 --night 2000   # a quick look

1. The whole DAG at two night sizes, S and 10·S examples: a text corpus sized for the night (3 task
   types) is run through every task of bonito_dataset as the executor runs them, each task in a
   fresh process calling what its operator calls (plan, extract and chunk per partition,
   collect_documents, plan_shards, generate and validate_shard per shard, validate, compare,
   publish (append, to the store's dataset; `--hub`: to the loopback Hub stand-in,
   tests/hub_server.py), update_ledger, summarize);
   the mapped tasks' instances run `--workers` at a time. Partitions (`--partition-mb`) and shards
   (`--shard-chunks`) have the same size at both sizes, so a task that grows with the night shows.
   Generation is a stand-in: an in-process engine answers every prompt at once in Bonito's format
   (vLLM's own cost is measured by benchmarks/generate_bench.py). Printed per size and task: wall
   time and the largest peak RSS (VmHWM of the task's process); then each task's 10·S / S RSS
   ratio (targets: <= 1.25x and <= 1 GiB at 10·S), the non-GPU time per example (all tasks but
   generate, at 10·S) and a projection of a 15M-example night on 32 CPU cores next to the GPU time
   at 10k output tok/s on 8 GPUs.
2. One append night against a published history of H and 10·H rows, in the Hub stand-in: real data
   shards plus the index and stats an append keeps (bonito_tasks/publish/history.py), built night by
   night. One night of `--night` rows (a tenth of them repeats of published rows) is published with
   `publish_mode=append` by the real publish stage, in a fresh process, through huggingface_hub
   over HTTP. Printed per size: publish wall time, peak RSS, bytes the server sent (what the night
   read from the target), per history row, and the files the commit touched; then the 10·H / H
   ratios. Targets: RSS ratio <= 1.3, wall ratio <= 2.0, <= 128 bytes read per history row at
   10·H, existing data shards untouched.

Last, one JSON line with the figures of both. Not a test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
MODEL = str(REPO_ROOT / "tests/assets/tiny-bonito")  # its tokenizer chunks the corpus
REPO_ID = "bench/nightly"
SEED_NIGHT = 200_000  # rows per seeded night (each built like an append)
TASK_TYPES = ("exqa", "ynqa", "qa")


# ---- 1. the whole DAG at S and 10·S, each task in a fresh process


class InstantBonito:
    """The generate backend of the night: answers every prompt at once, as Bonito's output reads
    (an instruction holding {{context}}, the pipe, the answer), varied by prompt and task type so
    that validate passes the rows: exqa answers a span of the passage, ynqa says yes and no in turn,
    qa answers with the passage's words. It stands in for vLLM (Engine protocol, generate/engine.py)."""

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        return [len(p) // 4 for p in prompts]

    def stream(self, prompts: dict[int, str], sampling_params: dict, flush_every: int):
        batch = []
        for index, prompt in prompts.items():
            batch.append((index, [bonito_answer(index, prompt)]))
            if len(batch) >= flush_every:
                yield batch
                batch = []
        if batch:
            yield batch


def bonito_answer(index: int, prompt: str):
    """Prompt `index`'s completion: its task type and passage read back from Bonito's prompt."""
    from bonito_tasks.format import CONTEXT_MARKER, CONTEXT_PLACEHOLDER, PIPE_MARKER, TASK_MARKER, TASKTYPE_MARKER
    from bonito_tasks.generate.engine import Completion
    from bonito_tasks.task_types import normalize_task_type

    head, rest = prompt.split(CONTEXT_MARKER, 1)
    task = normalize_task_type(head.split(TASKTYPE_MARKER, 1)[1])
    words = rest.split(TASK_MARKER, 1)[0].split() + ["passage"] * 6  # a short chunk still has words
    k = index * 7919 % max(1, len(words) - 12)
    if task == "exqa":
        question, answer = f'What comes after "{words[k]}" in the passage?', " ".join(words[k + 1:k + 4])
    elif task == "ynqa":
        question, answer = f'Does the passage mention "{words[k]}"?', "Yes" if index % 2 else "No"
    else:
        question, answer = f"What does the passage say about {words[k]}?", f"It says {' '.join(words[k:k + 6])}"
    text = f"{CONTEXT_PLACEHOLDER}\n\n{question}\n{PIPE_MARKER}\n{answer}"
    return Completion(text, len(text) // 4)


def make_corpus(folder: Path, n_bytes: int, doc_bytes: int, seed: int = 7) -> int:
    """Text documents of about `doc_bytes` each, `n_bytes` in all: paragraphs of sentences of
    pseudo-words (no two alike, so no chunk is a duplicate). Returns the bytes written."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = ["".join(map(chr, rng.choice(letters, rng.integers(2, 11)))) for _ in range(20_000)]
    folder.mkdir(parents=True)
    written = 0
    for i in range(math.ceil(n_bytes / doc_bytes)):
        words = [vocab[w] for w in rng.integers(0, len(vocab), doc_bytes // 7)]  # 6.5 letters a word, spaces
        cuts = np.cumsum(rng.integers(8, 25, len(words) // 8))
        sentences = [" ".join(words[a:b]).capitalize() + "." for a, b in zip(cuts, cuts[1:])]
        breaks = np.cumsum(rng.integers(3, 7, len(sentences) // 3))
        text = f"Document {i}.\n\n" + "\n\n".join(" ".join(sentences[a:b]) for a, b in zip(breaks, breaks[1:]))
        (folder / f"doc-{i:06d}.txt").write_text(text)
        written += len(text)
    return written


def bytes_per_chunk(config) -> float:
    """Corpus bytes per chunk, from chunking a sample of the corpus with the run's chunker."""
    from bonito_tasks.chunk import Chunker, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(Path(tmp) / "sample", 2**20, 2**20, seed=1)
        text = (Path(tmp) / "sample/doc-000000.txt").read_text()
    chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens, config.chunk_overlap_tokens)
    return len(text) / len(chunker.split_counted(text))


def _task(target, *args):
    """One task in a fresh worker process: returns (result, wall s, CPU s, peak RSS MiB of the process).
    `target`: "module:function" of the library, or a function of this script. Wall time counts the
    task's imports; CPU time is the whole process's. Peak RSS is VmHWM: ru_maxrss would keep the
    high-water mark of the parent the process was forked from before its exec."""
    started = time.perf_counter()
    if isinstance(target, str):
        module, name = target.split(":")
        target = getattr(importlib.import_module(module), name)
    result = target(*args)
    return result, time.perf_counter() - started, time.process_time(), peak_rss_mib()


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def generate_task(store, run, config, chunks, shard: int):
    """The generate operator's call, with the instant backend."""
    from bonito_tasks.generate.run import generate_shard

    return generate_shard(store, run, config, chunks, shard, engine=InstantBonito())


def compare_task(store, run, config, examples, token: str, endpoint: str):
    from bonito_tasks.compare import Compare

    return Compare(store, run, config, examples, token, endpoint=endpoint).execute()


def publish_task(store, run, config, examples, documents, token: str, endpoint: str, rows_per_shard: int):
    from bonito_tasks.publish import publish

    return publish(store, run, config, examples, documents, token, endpoint=endpoint, rows_per_shard=rows_per_shard)


def ledger_task(store, run, config, documents):
    """The update_ledger operator's calls: the ledger, then (publish committed) the chunk signatures."""
    from bonito_tasks.chunk.neardup import record_signatures
    from bonito_tasks.contracts import StageName
    from bonito_tasks.ledger import update_ledger
    from bonito_tasks.stage import StageWriter

    published = store.exists(StageWriter(store, run, StageName.PUBLISH).manifest_key)
    result = update_ledger(store, run, documents, config, published=published)
    if published:
        record_signatures(store, run, config)
    return result


class Night:
    """Runs the DAG's tasks as the executor would: each task in a fresh process (spawn, one task a
    process), a mapped task's instances `workers` at a time, the DAG's steps one after the other."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.pool, self.tasks, self.steps = pool, [], {}

    def step(self, name: str, calls: list[tuple]) -> list:
        started = time.perf_counter()
        futures = [self.pool.submit(_task, *call) for call in calls]
        results = []
        for future in futures:
            result, wall, cpu, rss = future.result()
            self.tasks.append({"task": name, "wall_s": wall, "cpu_s": cpu, "rss_mib": rss})
            results.append(result)
        self.steps[name] = time.perf_counter() - started
        return results

    def one(self, name: str, *call):
        return self.step(name, [call])[0]


def run_night(target_examples: int, args, tmp: Path) -> dict:
    """One night of about `target_examples` examples (3 task types) through every task of the DAG,
    appended to the store's dataset (`--hub`: to a fresh repo of the loopback Hub stand-in)."""
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import ChunkMetrics, PlanMetrics, RunRef
    from bonito_tasks.store import LocalStore
    from bonito_tasks.validate.run import partition_of
    from hub_server import HubServer

    config = RunConfig(source=str(tmp / "corpus"), store=str(tmp / "store"), model_id=MODEL,
                       task_types=list(TASK_TYPES), hub_repo_id=REPO_ID if args.hub else None, publish_mode="append",
                       partition_bytes=int(args.partition_mb * 2**20), chunk_shard_size=args.shard_chunks)
    corpus_bytes = make_corpus(tmp / "corpus", int(target_examples / len(TASK_TYPES) * args.bytes_per_chunk),
                               args.doc_kb * 1024)
    store, run = LocalStore(tmp / "store"), RunRef(dag_id="bonito_dataset", run_id="scheduled__2026-12-05T02:00:00")
    os.environ |= {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with HubServer() as hub, ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1,
                                                 mp_context=multiprocessing.get_context("spawn")) as pool:
        night = Night(pool)
        plan = night.one("plan", "bonito_tasks.extract.plan:plan", store, run, config)
        partitions = range(plan.metrics_as(PlanMetrics).partitions)
        extracted = night.step("extract", [("bonito_tasks.extract:extract_partition", store, run, config, plan, p)
                                           for p in partitions])
        documents = night.one("collect_documents", "bonito_tasks.extract:collect_documents", store, run, config,
                              extracted)
        chunked = night.step("chunk", [("bonito_tasks.chunk:chunk_partition", store, run, config, documents, p)
                                       for p in partitions])
        chunks = night.one("plan_shards", "bonito_tasks.chunk:plan_shards", store, run, config, chunked)
        shards = range(chunks.metrics_as(ChunkMetrics).shards)
        generated = night.step("generate", [(generate_task, store, run, config, chunks, s) for s in shards])
        checked = night.step("validate_shard", [("bonito_tasks.validate:validate_shard", store, run, config, g,
                                                 chunks, partition_of(g, s)) for s, g in zip(shards, generated)])
        examples = night.one("validate", "bonito_tasks.validate:combine_validated", store, run, config, checked)
        night.one("compare", compare_task, store, run, config, examples, hub.token, hub.url)
        night.one("publish", publish_task, store, run, config, examples, documents, hub.token, hub.url,
                  args.publish_shard_rows)
        night.one("update_ledger", ledger_task, store, run, config, documents)
        night.one("summarize", "bonito_tasks.summary:run_summary", store, run, config)
    wall = time.perf_counter() - started
    return {"examples": sum(g.rows_of("examples") for g in generated), "passed": examples.rows_of("examples"),
            "chunks": chunks.metrics_as(ChunkMetrics).chunks, "documents": len(list((tmp / "corpus").iterdir())),
            "corpus_mb": corpus_bytes / 1e6, "partitions": len(partitions), "shards": len(shards), "wall_s": wall,
            "tasks": night.tasks, "steps": night.steps}


def by_task(night: dict) -> dict[str, dict]:
    """Per task of the DAG: instances, wall time (sum, largest), CPU time and the largest peak RSS."""
    out: dict[str, dict] = {}
    for t in night["tasks"]:
        row = out.setdefault(t["task"], {"n": 0, "wall_s": 0.0, "max_wall_s": 0.0, "cpu_s": 0.0, "rss_mib": 0.0})
        row["n"] += 1
        row["wall_s"] += t["wall_s"]
        row["cpu_s"] += t["cpu_s"]
        row["max_wall_s"] = max(row["max_wall_s"], t["wall_s"])
        row["rss_mib"] = max(row["rss_mib"], t["rss_mib"])
    return out


def print_night(label: str, night: dict) -> None:
    print(f"night {label}: {night['examples']:,} examples generated ({night['passed']:,} passed validate) from "
          f"{night['chunks']:,} chunks of {night['corpus_mb']:.1f} MB in {night['documents']:,} documents; "
          f"{night['partitions']} partitions, {night['shards']} generate shards; DAG wall {night['wall_s']:.1f} s")
    print(f"   {'task':<18}{'tasks':>6}{'step wall s':>13}{'task wall s':>13}{'largest s':>11}{'CPU s':>9}"
          f"{'peak RSS MiB':>14}")
    for name, row in by_task(night).items():
        print(f"   {name:<18}{row['n']:>6}{night['steps'][name]:>13.1f}{row['wall_s']:>13.1f}"
              f"{row['max_wall_s']:>11.1f}{row['cpu_s']:>9.1f}{row['rss_mib']:>14.0f}")


def dag_figures(small: dict, large: dict, args) -> dict:
    """Per-task RSS ratios (10·S / S), the non-GPU time per example at 10·S and the projection."""
    rows_s, rows_l = by_task(small), by_task(large)
    print("peak RSS per task, 10·S / S (targets: <= 1.25x and <= 1024 MiB at 10·S):")
    ratios = {}
    for name in rows_l:
        ratios[name] = rows_l[name]["rss_mib"] / rows_s[name]["rss_mib"]
        over = ratios[name] > 1.25 or rows_l[name]["rss_mib"] > 1024
        print(f"   {name:<18}{rows_s[name]['rss_mib']:>8.0f} -> {rows_l[name]['rss_mib']:>6.0f} MiB  "
              f"{ratios[name]:5.2f}x{'  over target' if over else ''}")
    others = [row for name, row in rows_l.items() if name != "generate"]
    us = 1e6 * sum(row["wall_s"] for row in others) / large["examples"]
    cpu_us = 1e6 * sum(row["cpu_s"] for row in others) / large["examples"]
    cpu_h, wall_h = (x * args.project_examples / 1e6 / args.cpu_cores / 3600 for x in (cpu_us, us))
    gpu_h = args.project_examples * args.output_tokens / (args.gpu_tokens_per_s * args.gpus) / 3600
    print(f"non-GPU time per example at 10·S (every task but generate): {us:.0f} µs of task wall time, "
          f"{cpu_us:.0f} µs of CPU")
    print(f"projection, a {args.project_examples / 1e6:g}M-example night after a year of history: CPU tasks "
          f"{cpu_h:.2f} h on {args.cpu_cores} cores from their CPU time ({wall_h:.2f} h from their wall time; "
          f"tasks spread over the cores as the DAG maps them, history cost flat as part 2 measures), next to "
          f"GPU {gpu_h:.2f} h at {args.gpu_tokens_per_s:g} output tok/s on {args.gpus} GPUs "
          f"({args.output_tokens} output tokens per example, docs/scale.md)")
    worst = max(ratios, key=ratios.get)
    return {"task_rss_ratio": round(ratios[worst], 3), "task_rss_ratio_task": worst,
            "max_task_rss_mib": round(max(row["rss_mib"] for row in rows_l.values())),
            "non_gpu_us_per_example": round(us, 1), "non_gpu_cpu_us_per_example": round(cpu_us, 1),
            "projected_cpu_hours": round(cpu_h, 2),
            "projected_gpu_hours": round(gpu_h, 2), "night_examples_small": small["examples"],
            "night_examples_large": large["examples"]}


# ---- 2. one append night against a published history of H and 10·H rows


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
    from bonito_tasks.publish import files as content
    from bonito_tasks.publish.layout import append_indexed

    class Files:
        def __init__(self, files: dict[str, bytes]):
            self.files, self.paths = files, sorted(files)

        def read(self, path: str) -> bytes:
            return self.files[path]

    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for night, first in enumerate(range(0, history_rows, SEED_NIGHT)):
            tag = f"seed-{night:04d}"
            batch = rows(first, min(SEED_NIGHT, history_rows - first), tag)
            appended = append_indexed(Files(files), lambda batch=batch: [batch], batch.num_rows, tag, 100_000,
                                      Path(tmp) / tag, 0.9)
            files |= {path: content.read(data) for path, data in appended.files.items()}
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
    Path(out).write_text(json.dumps({"wall_s": wall, "rss_mib": peak_rss_mib()}))


APPEND_REPEATS = 3  # the same night is appended this many times to the same history: the median wall is reported


def measure(history_rows: int, night: int) -> dict:
    """The night appended to a fresh copy of the history APPEND_REPEATS times: the median wall time
    (one publish takes about a second here, so one run is mostly noise), the largest peak RSS."""
    from hub_server import HubServer

    started = time.perf_counter()
    files = seed_history(history_rows)
    seed_s = time.perf_counter() - started
    runs = []
    for _ in range(APPEND_REPEATS):
        with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
            hub.seed(REPO_ID, files)
            before = dict(hub.repo(REPO_ID).resolve("main").files)
            out = str(Path(tmp) / "night.json")
            env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(Path(tmp) / "hf")}
            subprocess.run([sys.executable, __file__, "--worker", hub.url, hub.token, str(night), str(history_rows),
                            out], check=True, env=env)
            after = hub.repo(REPO_ID).resolve("main").files
            runs.append({**json.loads(Path(out).read_text()),
                         "read_bytes": sum(size for method, _, size in hub.sent if method == "GET"),
                         "files_touched": sorted(p for p in after if before.get(p) != after[p]),
                         "data_shards_untouched": all(after.get(p) == data for p, data in before.items()
                                                      if p.startswith("data/"))})
    walls = sorted(r["wall_s"] for r in runs)
    last = runs[-1]
    return {**last, "wall_s": walls[len(walls) // 2], "walls_s": walls, "rss_mib": max(r["rss_mib"] for r in runs),
            "history_rows": history_rows, "read_per_row": last["read_bytes"] / history_rows,
            "data_shards_untouched": all(r["data_shards_untouched"] for r in runs), "seed_s": seed_s}


def append_figures(small: dict, large: dict, night: int) -> dict:
    for m in (small, large):
        print(f"history {m['history_rows']:>10,} rows: append of {night:,} rows {m['wall_s']:6.2f} s "
              f"(median of {', '.join(f'{w:.2f}' for w in m['walls_s'])}), "
              f"peak RSS {m['rss_mib']:6.0f} MiB, read {m['read_bytes'] / 2**20:7.1f} MiB "
              f"({m['read_per_row']:.1f} B per history row), commit touched {len(m['files_touched'])} files, "
              f"existing data shards untouched: {m['data_shards_untouched']} (history built in {m['seed_s']:.0f} s)")
    print("  files the large night's commit touched:", ", ".join(large["files_touched"]))
    ratios = {"append_wall_ratio": large["wall_s"] / small["wall_s"],
              "append_rss_ratio": large["rss_mib"] / small["rss_mib"]}
    print(f"10·H / H: wall {ratios['append_wall_ratio']:.2f}x (target <= 2.0), "
          f"peak RSS {ratios['append_rss_ratio']:.2f}x (target <= 1.3); "
          f"bytes read per history row at 10·H: {large['read_per_row']:.1f} (target <= 128)")
    return {**{k: round(v, 3) for k, v in ratios.items()},
            "append_read_bytes_per_history_row": round(large["read_per_row"], 1),
            "append_wall_s_large": round(large["wall_s"], 2), "append_rss_mib_large": round(large["rss_mib"]),
            "history_rows_large": large["history_rows"], "night_rows": night,
            "data_shards_untouched": small["data_shards_untouched"] and large["data_shards_untouched"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night-examples", type=int, default=100_000, help="S: examples of the small night "
                        "(10·S is measured too)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="mapped tasks run at once")
    parser.add_argument("--partition-mb", type=float, default=8, help="MiB of documents per extract/chunk partition")
    parser.add_argument("--shard-chunks", type=int, default=20_000, help="chunks per generate shard")
    parser.add_argument("--publish-shard-rows", type=int, default=100_000,
                        help="rows per published data shard (the library's default; smaller for a small run)")
    parser.add_argument("--hub", action="store_true",
                        help="publish to the Hub stand-in (it takes every file inside the commit, which "
                             "huggingface_hub then holds in memory: publish's RSS grows with the night there, "
                             "unlike on the Hub, where Parquet files go by LFS from their paths)")
    parser.add_argument("--doc-kb", type=int, default=20, help="KiB per document of the corpus")
    parser.add_argument("--project-examples", type=float, default=15e6, help="projection: examples a night")
    parser.add_argument("--cpu-cores", type=int, default=32, help="projection: CPU cores")
    parser.add_argument("--gpus", type=int, default=8, help="projection: GPUs")
    parser.add_argument("--gpu-tokens-per-s", type=float, default=10_000, help="projection: output tok/s per GPU")
    parser.add_argument("--output-tokens", type=int, default=150, help="projection: output tokens per example")
    parser.add_argument("--history", type=int, default=200_000, help="H: published rows (10·H is measured too)")
    parser.add_argument("--night", type=int, default=5_000, help="rows the measured append night publishes")
    parser.add_argument("--skip-dag", action="store_true", help="only the append night (part 2)")
    parser.add_argument("--skip-append", action="store_true", help="only the whole DAG (part 1)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    figures: dict = {}
    if not args.skip_dag:
        from bonito_tasks.config import RunConfig

        args.bytes_per_chunk = bytes_per_chunk(RunConfig(source="/unused", store="/unused", model_id=MODEL))
        nights = []
        for label, examples in (("S", args.night_examples), ("10·S", 10 * args.night_examples)):
            with tempfile.TemporaryDirectory(prefix="bonito-night-") as tmp:
                nights.append(run_night(examples, args, Path(tmp)))
            print_night(label, nights[-1])
        figures |= dag_figures(*nights, args)
    if not args.skip_append:
        figures |= append_figures(measure(args.history, args.night), measure(10 * args.history, args.night),
                                  args.night)
    print(json.dumps(figures))

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        night_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
