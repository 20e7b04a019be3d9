"""The validate stage at two sizes: peak memory and time of its tasks at S and 10·S example rows.

    .venv/bin/python benchmarks/validate_bench.py --rows 20000 --shard-rows 5000

The run is committed to a temporary local store as the pipeline lays it out: a chunk stage with
one part per generate shard and generate shards of --shard-rows rows, then validated as the DAG
does: a `validate_shard` task per generate shard (the GX row suite a window at a time), then the
`validate` reduce (cross-shard repeats from the pair keys, the dataset suite, Data Docs, report).
Each phase runs in its own process; the shard phase runs its shards one after another, so its peak
RSS is at most the most any one shard task needed plus what Python keeps between them (an upper
bound). Prints each phase's wall time (GX import not counted) and peak RSS at S and 10·S, and the
ratios 10·S / S: the row work grows with the run, the memory of every task should not.
--whole-run also measures the old in-memory check (`check_examples` over the whole table) at both
sizes, for comparison.

Rows cycle through 10 task types with valid answers (exqa spans of the chunk, mcqa options,
labels), so every check runs its full path; 1% of the rows are defects the suite quarantines, and
each shard repeats 10 pairs of the shard before it (quarantined by the reduce). Inputs hold the
chunk text (--chunk-chars) plus an instruction, as Bonito's do. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CHUNKS, EXAMPLES, ChunkMetrics, GenerateMetrics, RunRef
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore

RUN = RunRef(dag_id="bench", run_id="validate")

TASKS = {  # task type -> (instruction, output); "{span}" is a span of the chunk text
    "exqa": ("Answer from the passage. What does it say first?", "{span}"),
    "mcqa": ("Which is right?\nOptions:\n- the first\n- the second", "the first"),
    "ynqa": ("Is this passage about a contract?", "yes"),
    "nli": ("Does the passage imply the parties agree? true, false or neither", "neither"),
    "te": ("Does it follow that the clause applies?", "no"),
    "paraphrase_id": ("Are the two sentences paraphrases?", "yes"),
    "sentiment": ("What is the tone?", "neutral"),
    "topic_class": ("What is the topic?", "contract law"),
    "coref": ("Who does 'it' refer to?", "the agreement"),
    "summarization": ("Summarize the passage.", "A short summary of the clause and its effect."),
}
OTHER_LABEL = {"ynqa": "no", "nli": "true", "te": "yes", "paraphrase_id": "no", "sentiment": "positive",
               "topic_class": "insurance"}  # every other row, so no label dominates
WORDS = np.array("the party shall agree contract clause term notice payment within days of any such "
                 "written consent liability limited to this agreement which".split())


def synthetic(rows: int, chunk_chars: int, seed: int = 0, first: int = 0) -> tuple[pa.Table, pa.Table]:
    """`rows` examples and their chunks; ids and chunk texts numbered from `first` (a shard's own)."""
    rng = np.random.default_rng(seed)
    n_chunks = max(1, rows // 10)
    words_per_chunk = chunk_chars // 6
    base = [" ".join(rng.choice(WORDS, words_per_chunk)) for _ in range(1000)]
    texts = pa.array([f"Clause {first + i}. {base[i % 1000]}" for i in range(n_chunks)], pa.large_string())
    chunk_ids = pa.array([f"chunk-{first + i}" for i in range(n_chunks)])
    chunks = pa.table({"chunk_id": chunk_ids, "text": texts})

    names = list(TASKS)
    task_index = np.arange(rows) % len(names)
    chunk_of = pa.array(np.arange(rows) // len(names) % n_chunks)
    context = texts.take(chunk_of)
    instruction = pa.array([TASKS[t][0] for t in names], pa.large_string()).take(pa.array(task_index))
    inputs = pc.binary_join_element_wise(context, instruction, pa.scalar("\n", pa.large_string()))
    outputs = pa.array([TASKS[t][1] for t in names], pa.large_string()).take(pa.array(task_index))
    other_label = pa.array([OTHER_LABEL.get(t, TASKS[t][1]) for t in names], pa.large_string())
    other_label = other_label.take(pa.array(task_index))
    outputs = pc.if_else(pa.array(np.arange(rows) // len(names) % 2 == 1), other_label, outputs)
    outputs = pc.if_else(pc.equal(outputs, "{span}"), pc.utf8_slice_codeunits(context, 0, 20), outputs)
    defects = rng.random(rows) < 0.01
    outputs = pc.if_else(pa.array(defects), pa.scalar("<|pipe|>", pa.large_string()), outputs)
    constant = lambda value: pa.array(np.full(rows, value))  # noqa: E731
    examples = pa.table({
        "example_id": pa.array(np.char.add("ex-", np.arange(first, first + rows).astype(str))),
        "task_type": pa.array(np.array(names)[task_index]),
        "input": inputs,
        "output": outputs,
        "doc_id": constant("doc-0"),
        "chunk_id": chunk_ids.take(chunk_of),
        "char_start": constant(0),
        "char_end": constant(chunk_chars),
        "sample_index": pa.array(np.zeros(rows, dtype=np.int32)),
        "model_id": constant("BatsResearch/bonito-v1"),
        "model_revision": constant("abc"),
        "sampling_params": constant("{}"),
        "run_id": constant("bench"),
    }).cast(EXAMPLES)
    return examples, chunks


TASK_TYPES = list(TASKS)


def build(root: Path, rows: int, shard_rows: int, chunk_chars: int) -> None:
    """Commit a chunk stage and the generate shards of `rows` examples under `root`, a shard at a time."""
    store = LocalStore(root)
    shards = -(-rows // shard_rows)
    chunk_writer = StageWriter(store, RUN, "chunk")
    chunk_writer.begin()
    previous = None
    for shard in range(shards):
        n = min(shard_rows, rows - shard * shard_rows)
        examples, chunks = synthetic(n, chunk_chars, seed=shard, first=shard * shard_rows)
        if previous is not None:  # 10 pairs of the shard before: repeats only the reduce can see
            planted = {name: previous[name] if name in ("input", "output") else examples[name].slice(0, 10)
                       for name in EXAMPLES.names}
            examples = pa.concat_tables([pa.table(planted).cast(EXAMPLES), examples.slice(10)])
        previous = examples.slice(0, 10).select(["input", "output"]).to_pydict()
        previous = {k: pa.array(v, pa.large_string()) for k, v in previous.items()}
        m = chunks.num_rows
        chunk_writer.add("chunks", pa.table({
            "chunk_id": chunks["chunk_id"], "doc_id": pa.array(["doc-0"] * m), "chunk_index": pa.array(np.arange(m)),
            "char_start": pa.array(np.zeros(m, np.int64)), "char_end": pa.array(np.full(m, chunk_chars)),
            "n_tokens": pa.array(np.full(m, 300)), "text": chunks["text"], "page": pa.nulls(m, pa.int32()),
            "pending_task_types": pa.nulls(m, pa.list_(pa.string())), "also_in": pa.array([[]] * m),
        }).cast(CHUNKS))
        writer = StageWriter(store, RUN, "generate", partition=shard)
        writer.begin()
        writer.add("examples", examples)
        writer.commit(GenerateMetrics(prompts=n, generations=n))
    chunk_writer.commit(ChunkMetrics(chunks=rows // 10, shards=shards, shard_size=shard_rows // 10,
                                     shard_parts=list(range(shards))))


def child(phase: str, root: Path) -> dict:
    """One phase in this process: `shards` (every validate_shard task, one after another), `reduce`
    (the validate task) or `whole` (check_examples over the whole table in memory)."""
    import great_expectations  # noqa: F401  (import time is not validation time)

    store = LocalStore(root)
    config = RunConfig(source="/unused", store=str(root), task_types=TASK_TYPES, max_duplicate_rate=0.5)
    chunks = StageWriter(store, RUN, "chunk").committed()
    assert chunks is not None
    shards = chunks.metrics_as(ChunkMetrics).shards
    started = time.perf_counter()
    if phase == "shards":
        from bonito_tasks.validate import validate_shard

        for shard in range(shards):
            validate_shard(store, RUN, config, StageWriter(store, RUN, "generate", partition=shard).committed(),
                           chunks, shard)
        outcome = {"shards": shards}
    elif phase == "reduce":
        from bonito_tasks.validate import combine_validated

        manifest = combine_validated(store, RUN, config, [
            StageWriter(store, RUN, "validate", partition=shard).committed() for shard in range(shards)])
        metrics = manifest.metrics
        outcome = {"passed": metrics.passed, "quarantined": metrics.quarantined,
                   "repeats_across_shards": metrics.quality.failed_expectations.get("unique_input_output", 0)}
    else:
        from bonito_tasks.validate import check_examples

        examples = pa.concat_tables([store.read_table(StageWriter(store, RUN, "generate", partition=s).committed(),
                                                      "examples") for s in range(shards)])
        check = check_examples(examples, store.read_table(chunks, "chunks", columns=["chunk_id", "text"]), config)
        outcome = {"passed": int(check.passed.sum()), "quarantined": int((~check.passed).sum())}
    outcome["wall_s"] = round(time.perf_counter() - started, 2)
    outcome["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return outcome


def run_phase(phase: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", phase, "--store", str(root)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="S: the small run's example rows (10·S the large)")
    parser.add_argument("--shard-rows", type=int, default=5_000, help="example rows per generate shard")
    parser.add_argument("--chunk-chars", type=int, default=1200, help="characters of context per input")
    parser.add_argument("--whole-run", action="store_true", help="also the in-memory check over the whole table")
    parser.add_argument("--phase", choices=["shards", "reduce", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(child(args.phase, args.store)))
        return

    phases = ["shards", "reduce"] + (["whole"] if args.whole_run else [])
    figures: dict[int, dict[str, dict]] = {}
    for rows in (args.rows, 10 * args.rows):
        with tempfile.TemporaryDirectory(prefix="bonito-validate-bench-") as tmp:
            started = time.perf_counter()
            build(Path(tmp), rows, args.shard_rows, args.chunk_chars)
            print(f"{rows:,} rows in {-(-rows // args.shard_rows)} generate shards of {args.shard_rows:,}, built in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            figures[rows] = {phase: run_phase(phase, Path(tmp)) for phase in phases}
            for phase, figure in figures[rows].items():
                print(f"  {phase:7} {json.dumps(figure)}", flush=True)
    small, large = figures[args.rows], figures[10 * args.rows]
    print(f"\n10·S / S ({10 * args.rows:,} / {args.rows:,} rows):")
    for phase in phases:
        print(f"  {phase:7} peak RSS {small[phase]['peak_rss_mib']:,.0f} -> {large[phase]['peak_rss_mib']:,.0f} MiB "
              f"(x{large[phase]['peak_rss_mib'] / small[phase]['peak_rss_mib']:.2f}); wall {small[phase]['wall_s']} -> "
              f"{large[phase]['wall_s']} s (x{large[phase]['wall_s'] / small[phase]['wall_s']:.2f})")
    rows_per_s = 10 * args.rows / (large["shards"]["wall_s"] + large["reduce"]["wall_s"])
    print(f"  partitioned validate at 10·S: {rows_per_s:,.0f} rows/s on one process (the shards run in parallel "
          "in the DAG)")
    print(json.dumps({"validate_shards_rss_ratio": round(large["shards"]["peak_rss_mib"]
                                                          / small["shards"]["peak_rss_mib"], 3),
                      "validate_reduce_rss_ratio": round(large["reduce"]["peak_rss_mib"]
                                                          / small["reduce"]["peak_rss_mib"], 3),
                      "max_task_rss_mib": max(large[p]["peak_rss_mib"] for p in ("shards", "reduce")),
                      "rows_large": 10 * args.rows}))


if __name__ == "__main__":
    main()
