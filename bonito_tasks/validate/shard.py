"""Validate, the map side: the row checks of one generate shard, a window of rows at a time.

`ValidateShard` is a partition of the validate stage (`validate/shard-NNNNN/`, one per generate
shard, retried alone). It reads its generate shard's examples part by part, in windows of at most
WINDOW_ROWS rows, and the chunk texts of only the chunks those rows name (the chunk stage's parts
of this generate shard, `generate_shard_parts`; another part only for a chunk not found there). For
each window it runs the GX row suite on the row profile and writes the passed rows (`examples`)
and the failing ones with the expectations they failed (`quarantine`). Its memory is a window plus
the shard's pair keys, never the run.

What the reduce (run.py) needs of the shard is small: `ValidateAggregate` in the partition's
metrics (rows, passed, quarantine reasons, output-length and label counts, the row suite's GX
result added up over the windows) and `example_keys`, a 16-byte digest of each row's (input,
output) pair with its position, sorted by digest, from which the reduce finds the pairs that
repeat across shards. A repeat within the shard is quarantined here, as the whole-run check does
(the first occurrence goes on); a repeat of an earlier shard's pair is the reduce's to find.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.checks.gx import ValidationFailed, ephemeral_context, run_suite, to_pandas
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    EXAMPLE_KEYS,
    CheckFindings,
    ExpectationOutcome,
    GenerateMetrics,
    Manifest,
    RunRef,
    StageName,
    ValidateAggregate,
    ValidateMetrics,
    generate_shard_parts,
)
from bonito_tasks.passages import chunk_texts
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore
from bonito_tasks.tokens import count_tokens, tokenizer_name
from bonito_tasks.validate.profile import row_profile
from bonito_tasks.validate.report import ESTIMATED_UNIT, add_numbers, run_numbers
from bonito_tasks.validate.results import add_results, failed_rows, portable_result, summaries
from bonito_tasks.validate.suites import build_examples_suite, label_tasks, shape_tasks

WINDOW_ROWS = 50_000  # rows checked at once: the memory of a validate partition is about one window


class ValidateShard(Stage):
    """The row checks of one generate shard (see the module docstring)."""

    name = StageName.VALIDATE
    reads = (StageName.GENERATE, StageName.CHUNK)
    # The row checks only: a new dataset threshold keeps the partitions and redoes the reduce alone.
    config_fields = frozenset({"task_types", "min_output_tokens", "max_input_tokens", "max_output_tokens",
                               "model_id", "model_revision"})  # the report's lengths: the model's tokens

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, generated: Manifest, chunks: Manifest,
                 shard: int):
        super().__init__(store, run, config, [generated, chunks], partition=shard)
        self.generated, self.chunks, self.shard = generated, chunks, shard
        self.window_rows = WINDOW_ROWS

    def work(self, writer: StageWriter) -> ValidateMetrics:
        from bonito_tasks.validate.run import SUITE, failure_message, schema_errors

        config, generated = self.config, self.generated
        started = time.perf_counter()
        chunk_texts = self._chunk_texts()
        numbers = ValidateAggregate(
            shard=self.shard, parse_failures=dict(generated.metrics_as(GenerateMetrics).parse_failures),
            dropped_generations=generated.rows_of("dropped_generations"))
        seen: set[bytes] = set()  # the shard's pair keys so far: a repeat within the shard is quarantined here
        keys: list[pa.Table] = []
        row_result: dict[str, Any] = {}
        position, unit = 0, ""
        for window in self._windows():
            findings = CheckFindings(dag_id=self.run.dag_id, run_id=self.run.run_id, suite=SUITE.name,
                                     suite_version=SUITE.version, rows=window.num_rows, generate_shards=1)
            if problems := schema_errors(window.schema):
                findings.schema_problems = problems
                raise ValidationFailed(failure_message(findings), findings)
            inputs = pc.fill_null(window["input"].combine_chunks(), "")
            outputs = pc.fill_null(window["output"].combine_chunks(), "")
            digests = pair_digests(inputs, outputs)
            repeats = np.zeros(window.num_rows, dtype=bool)
            for i, digest in enumerate(digests):
                repeats[i] = digest in seen
                seen.add(digest)
            profile = row_profile(window, chunk_texts, label_tasks(config), shape_tasks(config), repeats=repeats)
            context = ephemeral_context()
            source = context.data_sources.add_pandas("bonito")
            suite = context.suites.add(build_examples_suite(config))
            rows = run_suite(context, source, "example_rows", suite, to_pandas(profile),
                             name=f"{suite.name}-v{SUITE.version}")
            failed_by_row = failed_rows(rows)
            contract = [e for e in rows.failed if e["level"] == "contract"]
            if contract:
                findings.failed = contract
                raise ValidationFailed(failure_message(findings), findings)
            passed = np.ones(window.num_rows, dtype=bool)
            passed[list(failed_by_row)] = False
            tokens = count_tokens(config, outputs) if unit != ESTIMATED_UNIT else None
            unit = f"tokens of {tokenizer_name(config)}" if tokens is not None else ESTIMATED_UNIT
            if tokens is None:  # no tokenizer on this worker: the estimate, for every window of the shard
                tokens = profile["output_tokens"].to_numpy(zero_copy_only=False)
            add_numbers(numbers, run_numbers(profile, passed, failed_by_row, tokens, label_tasks(config), window))
            numbers.unit = unit
            row_result = add_results(row_result, portable_result(rows.result))

            writer.add("examples", window.filter(pa.array(passed)))
            if failed_by_row:
                names = pa.array([failed_by_row[i] for i in sorted(failed_by_row)], pa.list_(pa.string()))
                writer.add("quarantine", window.filter(pa.array(~passed)).append_column("failed_expectations", names))
            keys.append(pa.table({
                "key_hi": digests_half(digests, 0), "key_lo": digests_half(digests, 1),
                "position": pa.array(np.arange(position, position + window.num_rows, dtype=np.int64)),
                "passed": pa.array(passed), "output_tokens": pa.array(np.asarray(tokens).astype(np.int32)),
            }, schema=EXAMPLE_KEYS))
            position += window.num_rows
        if keys:
            table = pa.concat_tables(keys)
            writer.add("example_keys", table.take(pc.sort_indices(table, [("key_hi", "ascending"),
                                                                             ("key_lo", "ascending")])))
        numbers.row_result = row_result
        return ValidateMetrics(
            examples_in=numbers.rows, passed=numbers.passed, quarantined=numbers.rows - numbers.passed, suite=SUITE,
            expectations=[ExpectationOutcome(**e) for e in summaries(row_result)] if row_result else [],
            validation_s=round(time.perf_counter() - started, 3), aggregate=numbers,
        )

    def _windows(self) -> Iterator[pa.Table]:
        """The shard's examples in order, at most `window_rows` rows at a time (small parts joined)."""
        pending: list[pa.Table] = []
        size = 0
        for index in range(len(self.generated.shards_of("examples"))):
            part = self.store.read_shard(self.generated, "examples", index)
            for start in range(0, part.num_rows, self.window_rows):
                piece = part.slice(start, self.window_rows)
                if size and size + piece.num_rows > self.window_rows:
                    yield pa.concat_tables(pending)
                    pending, size = [], 0
                pending.append(piece)
                size += piece.num_rows
        if size:
            yield pa.concat_tables(pending)

    def _chunk_texts(self) -> pa.Table:
        """(chunk_id, text) of the chunks this shard's examples name: from the chunk parts of this
        generate shard, and only for a chunk not found there from the other parts (ids first)."""
        wanted: set[str] = set()
        for index in range(len(self.generated.shards_of("examples"))):
            ids = self.store.read_shard(self.generated, "examples", index, columns=["chunk_id"])["chunk_id"]
            wanted.update(i for i in pc.unique(ids.combine_chunks()).to_pylist() if i is not None)
        return chunk_texts(self.store, self.chunks, wanted, generate_shard_parts(self.chunks, self.shard))


def pair_digests(inputs: pa.Array, outputs: pa.Array) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each (input, output) pair (the input's length first, so no two
    pairs share their bytes)."""
    digests = []
    for text, answer in zip(inputs.to_pylist(), outputs.to_pylist(), strict=True):
        head = text.encode()
        digests.append(hashlib.blake2b(len(head).to_bytes(8, "little") + head + answer.encode(),
                                       digest_size=16).digest())
    return digests


def digests_half(digests: list[bytes], half: int) -> pa.Array:
    """The first (0) or second (1) 8 bytes of each digest, as big-endian unsigned integers (so the
    keys sort as the digests do)."""
    joined = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2) if digests else np.zeros((0, 2), ">u8")
    return pa.array(joined[:, half].astype(np.uint64))


def validate_shard(store: ArtifactStore, run: RunRef, config: RunConfig, generated: Manifest, chunks: Manifest,
                   shard: int) -> Manifest:
    return ValidateShard(store, run, config, generated, chunks, shard).execute()
