"""What the validated rows are made of, in numbers that add up across partitions: the input-length
distribution, the share of extractive answers found verbatim in their passage, the writing-system
mix, the distinct-bigram diversity of the outputs and the top source documents. The scorecard
(bonito_tasks.release) compares them with the last release's.

All of them count every validated row (passed and quarantined): they describe what the documents
and the model produced, so a repeat that the reduce moves to quarantine later changes nothing here.
Input lengths are the row profile's estimate (UTF-8 bytes / 4): tokenizing every passage again
would cost more than the rest of validate. The bigram diversity is a K-minimum-values sketch
(the `SKETCH_SIZE` smallest distinct bigram hashes): partitions merge exactly by keeping the
smallest of their union, and the distinct count it estimates is within a few percent.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import BigramSketch, ValidateAggregate

INPUT_BUCKET = 16  # estimated tokens per input-length bucket
SKETCH_SIZE = 512  # smallest distinct bigram hashes kept per task type (relative error about 1 / sqrt)
SOURCES_KEPT = 100  # a partition's documents with the most rows, kept for the run's top sources
# Writing systems told apart by the script of a row's letters; an ASCII-only input is Latin at once.
SCRIPTS = ("Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Han", "Hiragana", "Katakana",
           "Hangul", "Thai")


def text_mix(window: pa.Table, profile: pa.Table) -> ValidateAggregate:
    """The mix numbers of some validated rows (`window`, the examples; `profile`, their row profile)."""
    task_type = profile["task_type"].to_numpy(zero_copy_only=False)
    input_tokens = profile["input_tokens"].to_numpy(zero_copy_only=False)
    found = profile["answer_in_context"].combine_chunks()
    outputs = pc.fill_null(window["output"].combine_chunks(), "").to_pylist()
    numbers = ValidateAggregate(scripts=scripts(pc.fill_null(window["input"].combine_chunks(), "")),
                                sources=top(dict(_counts(window["doc_id"].combine_chunks()))))
    for task in sorted(set(task_type)):
        rows = np.flatnonzero(task_type == task)
        buckets, counts = np.unique(input_tokens[rows] // INPUT_BUCKET * INPUT_BUCKET, return_counts=True)
        numbers.input_lengths[task] = {int(b): int(c) for b, c in zip(buckets, counts, strict=True)}
        checked = found.take(pa.array(rows)).drop_null()
        if len(checked):
            numbers.verbatim[task] = (int(pc.sum(checked).as_py() or 0), len(checked))
        numbers.bigrams[task] = bigram_sketch([outputs[i] for i in rows])
    return numbers


def scripts(texts: pa.Array) -> dict[str, int]:
    """Rows per writing system: the script most of a text's letters are written in ("none": no letters)."""
    ascii_only = pc.string_is_ascii(texts)
    mixed = np.flatnonzero(~ascii_only.to_numpy(zero_copy_only=False))
    counts: dict[str, int] = {}
    latin = pc.count_substring_regex(texts, r"[A-Za-z]").to_numpy(zero_copy_only=False)
    plain = np.flatnonzero(ascii_only.to_numpy(zero_copy_only=False))
    if n := int((latin[plain] > 0).sum()):
        counts["Latin"] = n
    if n := int((latin[plain] == 0).sum()):
        counts["none"] = n
    if len(mixed):
        others = texts.take(pa.array(mixed))
        letters = np.stack([pc.count_substring_regex(others, rf"\p{{{name}}}").to_numpy(zero_copy_only=False)
                            for name in SCRIPTS])
        best = np.where(letters.max(axis=0) > 0, letters.argmax(axis=0), len(SCRIPTS))
        for index, n in zip(*np.unique(best, return_counts=True), strict=True):
            name = SCRIPTS[index] if index < len(SCRIPTS) else "none"
            counts[name] = counts.get(name, 0) + int(n)
    return counts


def bigram_sketch(texts: list[str]) -> BigramSketch:
    """The bigram count of `texts` and the SKETCH_SIZE smallest distinct bigram hashes."""
    from bonito_tasks.minhash import shingles

    hashes = shingles(texts, ngram=2).hashes if texts else np.zeros(0, np.uint64)
    return BigramSketch(bigrams=len(hashes), smallest=np.unique(hashes)[:SKETCH_SIZE].tolist())


def merge_sketches(a: BigramSketch, b: BigramSketch) -> BigramSketch:
    smallest = sorted(set(a.smallest) | set(b.smallest))[:SKETCH_SIZE]
    return BigramSketch(bigrams=a.bigrams + b.bigrams, smallest=smallest)


def distinct_share(sketch: BigramSketch) -> float | None:
    """Distinct bigrams / bigrams (distinct-2): exact below SKETCH_SIZE distinct, else the KMV estimate."""
    if not sketch.bigrams:
        return None
    if len(sketch.smallest) < SKETCH_SIZE:
        distinct = float(len(sketch.smallest))
    else:
        distinct = (SKETCH_SIZE - 1) / ((sketch.smallest[-1] + 1) / 2.0**64)
    return round(min(1.0, distinct / sketch.bigrams), 4)


def add_mix(total: ValidateAggregate, part: ValidateAggregate) -> None:
    """Add `part`'s mix numbers to `total` (in place)."""
    for task, counts in part.input_lengths.items():
        mine = total.input_lengths.setdefault(task, {})
        for bucket, n in counts.items():
            mine[bucket] = mine.get(bucket, 0) + n
    for task, (found, checked) in part.verbatim.items():
        old = total.verbatim.get(task, (0, 0))
        total.verbatim[task] = (old[0] + found, old[1] + checked)
    for task, sketch in part.bigrams.items():
        total.bigrams[task] = merge_sketches(total.bigrams[task], sketch) if task in total.bigrams else sketch
    total.scripts = _added(total.scripts, part.scripts)
    total.sources = top(_added(total.sources, part.sources))


def top(counts: dict[str, int], n: int = SOURCES_KEPT) -> dict[str, int]:
    """The `n` largest counts, largest first (ties by name)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _added(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {name: a.get(name, 0) + b.get(name, 0) for name in a | b}


def _counts(values: pa.Array) -> list[tuple[str, int]]:
    return [(c["values"], c["counts"]) for c in pc.value_counts(values.drop_null()).to_pylist()]
