"""The row profile: one narrow row of derived values per example, computed vectorized with
pyarrow.compute, plus Python loops only where a row must be compared with its chunk text (exqa
and mcqa rows, inputs barely longer than their chunk, and rows with markup: markup is checked in
what the model generated, outside the chunk text the row quotes).

GX runs the suite on this profile rather than on the raw text: its pandas engine fingerprints the
whole dataframe, which is slow on wide string columns, while these columns are numbers, flags and
short labels. Each derived column is named after what it measures; a null means "not applicable
to this row" (GX's column-map expectations skip nulls).

Token counts are a proxy: ceil(UTF-8 bytes / 4), the usual bytes-per-token of English BPE
vocabularies (Mistral's included). It costs nothing (Arrow offsets), where tokenizing or even
splitting on whitespace costs more than the whole suite.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.checks.gx import present_probe
from bonito_tasks.contracts import EXAMPLES
from bonito_tasks.format import CONTEXT_PLACEHOLDER, MARKERS

BYTES_PER_TOKEN = 4
# Any Bonito marker or an unfilled placeholder left in the text means post-processing went wrong.
MARKUP_REGEXES = (
    r"<\|(?:" + "|".join(re.escape(m[2:-2]) for m in MARKERS) + r")\|>",
    re.escape(CONTEXT_PLACEHOLDER),
)
# An input whose text outside the context is shorter than this (e.g. "Q:") is not an instruction.
MIN_INSTRUCTION_TOKENS = 2
COPY_SLACK_BYTES = 16  # pre-filter for that test: < 8 instruction bytes plus a little whitespace
KEY_BYTES = 32  # of the input's head and tail in the duplicate pre-grouping
# Characters stripped around an output before it is compared with a label set.
LABEL_STRIP = " \t\r\n.!?\"'`"
_OPTION_LETTER = re.compile(r"\(?([A-Ha-h1-8])[).:]?")


def tokens(array: pa.Array) -> pa.Array:
    """The token-count proxy of a string column (null stays null)."""
    return pc.ceil(pc.divide(pc.cast(pc.binary_length(array), pa.float64()), BYTES_PER_TOKEN)).cast(pa.int64())


def normalize_label(array: pa.Array) -> pa.Array:
    return pc.utf8_trim(pc.utf8_lower(array), characters=LABEL_STRIP)


def _only(mask: pa.Array, values: pa.Array) -> pa.Array:
    """values where mask holds, null elsewhere."""
    return pc.if_else(mask, values, pa.nulls(len(values), values.type))


def has_markup(array: pa.Array) -> pa.Array:
    """Whether each string holds a Bonito marker or the placeholder.

    One regex per literal prefix: RE2 skips ahead to a fixed first byte quickly, but an alternation
    of tokens with different first bytes is about 20 times slower over long inputs.
    """
    return pc.or_(*(pc.match_substring_regex(array, pattern) for pattern in MARKUP_REGEXES))


def _codes(array: pa.Array) -> np.ndarray:
    return pc.dictionary_encode(array).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _duplicate_repeats(inputs: pa.Array, outputs: pa.Array) -> np.ndarray:
    """True for the second and later occurrences of an (input, output) pair.

    Hashing every full input is the costliest step there could be, so rows are first grouped by a
    cheap key (output, input length, first and last KEY_BYTES bytes of the input); only rows
    sharing a key are compared in full.
    """
    n = len(inputs)
    repeat = np.zeros(n, dtype=bool)
    if n == 0:
        return repeat
    key = np.zeros(n, dtype=np.int64)
    raw = inputs.cast(pa.large_binary())
    for part in (_codes(outputs), pc.binary_length(inputs).to_numpy(zero_copy_only=False).astype(np.int64),
                 _codes(pc.binary_slice(raw, 0, KEY_BYTES)), _codes(pc.binary_slice(raw, -KEY_BYTES))):
        key = np.unique(key * (int(part.max()) + 1) + part, return_inverse=True)[1].astype(np.int64)
    counts = np.bincount(key)
    candidates = np.flatnonzero(counts[key] > 1)
    if len(candidates):
        pairs = pc.binary_join_element_wise(
            pc.cast(inputs.take(candidates), pa.large_string()),
            pc.cast(outputs.take(candidates), pa.large_string()),
            pa.scalar("\x1f", pa.large_string()),
        )
        _, first = np.unique(_codes(pairs), return_index=True)
        is_first = np.zeros(len(candidates), dtype=bool)
        is_first[first] = True
        repeat[candidates[~is_first]] = True
    return repeat


def _answer_in_options(text: str, context: str | None, answer: str) -> bool:
    """The answer (or its option letter) appears in the instruction, i.e. the input minus the context."""
    rest = text.replace(context, "", 1) if context and context in text else text
    answer = answer.strip().rstrip(".")
    if not answer:
        return False
    if answer.lower() in rest.lower():
        return True
    letter = _OPTION_LETTER.fullmatch(answer)
    return bool(letter and re.search(rf"(^|[\s(]){re.escape(letter.group(1))}[).:]", rest))


def _answer_in_context(context: str | None, answer: str) -> bool:
    """Exact substring, or case- and whitespace-insensitive substring."""
    if context is None:
        return False
    answer = answer.strip()
    if not answer:
        return False
    if answer in context:
        return True
    squash = lambda s: " ".join(s.lower().split())  # noqa: E731
    return squash(answer) in squash(context)


def _generated_has_markup(context: str | None, text: str) -> bool:
    """Whether the text holds markup outside every copy of the chunk text."""
    if context:
        text = text.replace(context, "\x1f")  # a separator: markup cannot form across a removed context
    return any(re.search(pattern, text) for pattern in MARKUP_REGEXES)


def _copies_context(text: str, context: str | None) -> bool:
    if not context or context not in text:
        return False
    rest = text.replace(context, "", 1)
    return len(rest.strip().encode()) < MIN_INSTRUCTION_TOKENS * BYTES_PER_TOKEN


def row_profile(examples: pa.Table, chunks: pa.Table, label_tasks: list[str], shape_tasks: list[str],
                repeats: np.ndarray | None = None) -> pa.Table:
    """The derived columns the row suite checks, one row per example in the same order.

    `chunks` holds (chunk_id, text) of the run's chunk stage (at least of the examples' chunks);
    `label_tasks` and `shape_tasks` are the task types whose outputs get a `label__<task>` /
    `label_tokens__<task>` column. `repeats`: which rows repeat an earlier (input, output) pair, when
    the caller knows (a partition of the run: by their keys); else found among these rows.
    """
    n = examples.num_rows
    columns: dict[str, pa.Array] = {}
    for field in EXAMPLES:  # not-null checks look at a narrow stand-in of each column
        columns[f"{field.name}__present"] = present_probe(examples[field.name].combine_chunks())
    task_type = pc.fill_null(examples["task_type"].combine_chunks(), "")
    inputs = pc.fill_null(examples["input"].combine_chunks(), "")
    outputs = pc.fill_null(examples["output"].combine_chunks(), "")
    columns["task_type"] = task_type
    columns["input_tokens"] = tokens(inputs)
    columns["output_tokens"] = tokens(outputs)
    columns["repeats_input_output"] = pa.array(_duplicate_repeats(inputs, outputs) if repeats is None else repeats)

    # Join each example to its chunk's text.
    chunk_index = pc.index_in(pc.fill_null(examples["chunk_id"].combine_chunks(), ""), value_set=chunks["chunk_id"])
    columns["chunk_found"] = pc.is_valid(chunk_index)
    context_bytes = pc.binary_length(chunks["text"].combine_chunks()).take(chunk_index)
    chunk_texts = [t.strip() for t in chunks["text"].to_pylist()] + [None]  # [-1]: no chunk
    chunk_rows = pc.fill_null(chunk_index, -1).to_numpy(zero_copy_only=False)

    def per_row(mask: pa.Array, check, *arrays: pa.Array) -> pa.Array:
        """check(context, *values) for the rows in mask, null elsewhere (a loop over those rows only)."""
        rows = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
        values = [a.take(rows).to_pylist() for a in arrays]
        result = np.full(n, None, dtype=object)
        result[rows] = [check(chunk_texts[chunk_rows[i]], *v) for i, *v in zip(rows, *values, strict=True)]
        return pa.array(result, pa.bool_())

    # Markup is checked in what the model generated: the text outside the chunk's own (the source
    # passage may hold "<|pipe|>" or "{{context}}", and the reference library keeps such rows).
    # Only rows whose whole text has markup are looked at again without the chunk text.
    for side, values in (("input", inputs), ("output", outputs)):
        columns[f"{side}_has_markup"] = pc.fill_null(per_row(has_markup(values), _generated_has_markup, values), False)
    # An input that copies the context is at most a few bytes longer than it: test only those rows.
    maybe_copy = pc.less(pc.subtract(pc.binary_length(inputs), context_bytes), COPY_SLACK_BYTES)
    copies = per_row(maybe_copy, lambda ctx, text: _copies_context(text, ctx), inputs)
    columns["copies_context"] = pc.fill_null(copies, False)
    columns["answer_in_context"] = per_row(pc.equal(task_type, "exqa"), _answer_in_context, outputs)
    columns["answer_in_options"] = per_row(
        pc.equal(task_type, "mcqa"), lambda ctx, text, answer: _answer_in_options(text, ctx, answer), inputs, outputs
    )
    labels = normalize_label(outputs)
    for task in label_tasks:
        columns[f"label__{task}"] = _only(pc.equal(task_type, task), labels)
    for task in shape_tasks:
        columns[f"label_tokens__{task}"] = _only(pc.equal(task_type, task), columns["output_tokens"])
    return pa.table(columns)
