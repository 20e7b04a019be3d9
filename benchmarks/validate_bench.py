"""Validation throughput: the real row and dataset suites (GX) over N synthetic example rows.

    .venv/bin/python benchmarks/validate_bench.py --rows 1000000

Rows cycle through 10 task types with valid answers (exqa spans of the chunk, mcqa options,
labels), so every check runs its full path; 1% of the rows are defects the suite quarantines.
Inputs hold the chunk text (--chunk-chars) plus an instruction, as Bonito's do. Validation time
is check_examples (profile + both GX suites + Data Docs), not building the data or importing GX.
Prints rows/s; not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES
from bonito_tasks.validate.profile import row_profile
from bonito_tasks.validate.run import check_examples
from bonito_tasks.validate.suites import label_tasks, shape_tasks

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


def synthetic(rows: int, chunk_chars: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    n_chunks = max(1, rows // 10)
    words_per_chunk = chunk_chars // 6
    base = [" ".join(rng.choice(WORDS, words_per_chunk)) for _ in range(1000)]
    texts = pa.array([f"Clause {i}. {base[i % 1000]}" for i in range(n_chunks)], pa.large_string())
    chunk_ids = pa.array([f"chunk-{i}" for i in range(n_chunks)])
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
        "example_id": pa.array(np.char.add("ex-", np.arange(rows).astype(str))),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-chars", type=int, default=1200, help="characters of context per input")
    args = parser.parse_args()

    import great_expectations  # noqa: F401  (import time is not validation time)

    started = time.perf_counter()
    examples, chunks = synthetic(args.rows, args.chunk_chars)
    print(f"built {examples.num_rows} rows ({examples['input'].nbytes / 1e6:.0f} MB of input text) "
          f"in {time.perf_counter() - started:.1f} s")
    config = RunConfig(source="/unused", store="/unused", task_types=list(TASKS))

    started = time.perf_counter()
    row_profile(examples, chunks, label_tasks(config), shape_tasks(config))
    profile_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as docs:
        started = time.perf_counter()
        check = check_examples(examples, chunks, config, docs_dir=Path(docs))
        total_s = time.perf_counter() - started
    passed = int(check.passed.sum())
    print(f"profile alone: {profile_s:.2f} s; check_examples (profile + GX row and dataset suites + Data Docs): "
          f"{total_s:.2f} s; {passed} passed, {args.rows - passed} quarantined; success={check.success}")
    print(f"{args.rows / total_s:,.0f} rows/s")


if __name__ == "__main__":
    main()
