"""The data contracts between stages: Arrow schemas of every table and the stage manifest.

Every stage writes Parquet shards that follow one of these schemas, then a manifest
(`_manifest.json`, written last) that is the commit marker of the stage.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class StageName(StrEnum):
    """The stages of a run, in order; each is the name of its folder under the run's folder."""

    PLAN = "plan"
    EXTRACT = "extract"
    CHUNK = "chunk"
    GENERATE = "generate"
    VALIDATE = "validate"
    COMPARE = "compare"  # the scorecard and the drift checks against the last release (bonito_tasks/release)
    PUBLISH = "publish"

MANIFEST_NAME = "_manifest.json"
FAILURE_NAME = "_failure.json"  # what a stage that failed left instead of a manifest (see StageFailure)
# <stage>/replaced-shard-NNNNN/: parts of a partition that the stage's reduce wrote again in their place
# (validate moves rows repeating another shard's pair to the quarantine); its manifest lists them.
REPLACED_PREFIX = "replaced-"

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),  # sha256 of the source bytes (tabular: of the row's text)
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("page_starts", pa.list_(pa.int64())),  # char offset of each page (PDF), else null
        # The run's task types still to do for this document (the ledger has the others for the
        # run's processing target); null: all of the run's task types.
        pa.field("pending_task_types", pa.list_(pa.string())),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # stable label, e.g. "corrupt_pdf"
        pa.field("detail", pa.string(), nullable=False),  # human-readable cause
        pa.field("size_bytes", pa.int64()),
        # How the ledger remembers this reject (see ledger.reject_key); null: not remembered.
        pa.field("ledger_key", pa.string()),
    ]
)

CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),  # sha256 of doc_id and span
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),  # position within the document
        pa.field("char_start", pa.int64(), nullable=False),  # span [start, end) in the document text
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("page", pa.int32()),  # 1-based PDF page where the chunk starts, else null
        pa.field("pending_task_types", pa.list_(pa.string())),  # its document's; null: all of the run's
        # Other places with the same text (exact duplicates) or nearly the same (near-duplicates: MinHash
        # similarity at or over near_dup_threshold): each is kept once, in its first place.
        pa.field("also_in", pa.list_(pa.struct([("doc_id", pa.string()), ("char_start", pa.int64()),
                                                 ("char_end", pa.int64())])), nullable=False),
    ]
)

# The MinHash signature of each chunk (bonito_tasks/minhash.py: 128 uint32, little-endian), with the
# task types it is generated for (null: all of the run's). A chunk partition writes one part per chunks
# part, row for row; the chunk stage lists those of the chunks it kept, which the ledger task records
# for later runs (near-duplicates of earlier runs) once publish succeeded.
CHUNK_SIGNATURES = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("signature", pa.binary(512), nullable=False),
        pa.field("task_types", pa.list_(pa.string())),
    ]
)

EXAMPLES = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),  # sha256 of lineage key
        pa.field("task_type", pa.string(), nullable=False),  # short name, see task_types.py
        pa.field("input", pa.large_string(), nullable=False),
        pa.field("output", pa.large_string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),  # which of the n generations
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_revision", pa.string(), nullable=False),  # hub revision or content hash
        pa.field("sampling_params", pa.string(), nullable=False),  # canonical JSON
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# A generation that did not become an example, and why (no_pipe, extra_pipe, duplicate,
# prompt_too_long): with `examples` it accounts for every (chunk_id, task_type, sample_index).
DROPPED_GENERATIONS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("generated_text", pa.large_string(), nullable=False),
    ]
)

QUARANTINE = EXAMPLES.append(pa.field("failed_expectations", pa.list_(pa.string()), nullable=False))

# The planned source listing: one row per file, in listing order, with the partition that reads it.
SOURCE_FILES = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("suffix", pa.string(), nullable=False),
        pa.field("local_path", pa.string()),  # a local file or saved-dataset folder, else null
        pa.field("reject_reason", pa.string()),  # found while listing (symlink escape, unreadable), else null
        pa.field("reject_detail", pa.string()),
    ]
)

# A document whose content an earlier partition already holds (kept once, like duplicate files).
DUPLICATE_DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),  # the partition whose copy is dropped
        pa.field("source_uri", pa.string(), nullable=False),
    ]
)

# One row per example of a validate partition, sorted by key: a 16-byte digest of its (input, output)
# pair (two uint64 halves), its position in the generate shard, whether it passed the partition's
# row checks, and its output length. The reduce finds repeats across partitions from these alone.
EXAMPLE_KEYS = pa.schema(
    [
        pa.field("key_hi", pa.uint64(), nullable=False),
        pa.field("key_lo", pa.uint64(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("output_tokens", pa.int32(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "source_files": SOURCE_FILES,
    "duplicate_documents": DUPLICATE_DOCUMENTS,
    "documents": DOCUMENTS,
    "rejects": REJECTS,
    "chunks": CHUNKS,
    "chunk_signatures": CHUNK_SIGNATURES,
    "examples": EXAMPLES,
    "dropped_generations": DROPPED_GENERATIONS,
    "quarantine": QUARANTINE,
    "example_keys": EXAMPLE_KEYS,
}


# The text contract of every text column: no U+FFFE (PDFium's soft-hyphen mark), no U+FFFD (text lost
# before it reached us), no C0 control but "\n" and "\t". A pattern both Python's re and RE2
# (pyarrow.compute.match_substring_regex) accept: \xhh escapes for the controls, the two
# non-characters written literally.
FORBIDDEN_CHARS_PATTERN = "[\\x00-\\x08\\x0b-\\x1f\ufffd\ufffe]"
FORBIDDEN_CHARS = re.compile(FORBIDDEN_CHARS_PATTERN)


def has_forbidden_chars(text: str) -> bool:
    """Whether the text breaks the contract: U+FFFE, U+FFFD or a C0 control other than \\n and \\t."""
    return FORBIDDEN_CHARS.search(text) is not None


def first_forbidden_char(text: str) -> tuple[int, str] | None:
    """(offset, "U+XXXX") of the first character that breaks the contract, for error messages."""
    found = FORBIDDEN_CHARS.search(text)
    return (found.start(), f"U+{ord(found.group()):04X}") if found else None


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, read a buffer at a time."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class RunRef(BaseModel):
    """Which pipeline run a stage belongs to (the Airflow DAG and run ids, and a link for people)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: str
    run_id: str
    run_url: str | None = None


class ShardRef(BaseModel):
    """One Parquet file of a table, relative to the stage directory."""

    model_config = ConfigDict(extra="forbid")

    table: str
    path: str
    rows: int
    sha256: str
    bytes: int | None = None  # the file's size (None in manifests written before it was recorded)


# ---- Typed metrics: one model per stage, one for the run summary. Manifests serialize them;
# the summary, card, alerts and operators read their fields (a renamed field is a type error).


class _Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Fields that differ between two attempts over the same data (timings): left out of the
    # manifest's content fingerprint, so a stage redone with the same result keeps its readers reused.
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"wall_s"})

    def counts(self) -> dict[str, int]:
        """The integer fields: the few numbers that travel in XCom and asset events."""
        return {k: v for k, v in self if isinstance(v, int) and not isinstance(v, bool)}


class RejectSample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_uri: str
    reason: str
    detail: str


class ExtractMetrics(_Metrics):
    stage: Literal["extract"] = "extract"
    partitions: int = 0  # 0: a partition's own manifest
    files: int = 0  # files listed under the source
    documents: int = 0  # new documents committed
    skipped_known: int = 0  # documents already in the ledger
    skipped_rejects: int = 0  # files the ledger remembers as rejected, unchanged: not read again
    duplicate_files: int = 0  # files (or rows) whose content another file already gave
    rejects: int = 0
    pages: int = 0
    furniture_lines: int = 0  # PDF running headers, footers and page numbers removed
    source_bytes: int = 0
    wall_s: float = 0.0
    rejects_by_reason: dict[str, int] = Field(default_factory=dict)
    reject_samples: list[RejectSample] = Field(default_factory=list)  # the first 100


class PlanMetrics(_Metrics):
    stage: Literal["plan"] = "plan"
    files: int = 0
    source_bytes: int = 0
    partitions: int = 0
    largest_partition_bytes: int = 0
    wall_s: float = 0.0


class ChunkMetrics(_Metrics):
    stage: Literal["chunk"] = "chunk"
    partitions: int = 0  # 0: a partition's own manifest
    documents: int = 0
    chunks: int = 0  # kept (the stage), or made before cross-partition de-duplication (a partition)
    shards: int = 0  # generate shards
    shard_size: int = 0  # chunks per generate shard
    shard_parts: list[int] = Field(default_factory=list)  # the first chunks part of each generate shard
    duplicate_chunks: int = 0  # exact and near-duplicates kept once (their places are in also_in)
    short_chunks: int = 0
    # Quality filters (chunk/quality.py): reason -> chunks dropped before generation.
    filtered: dict[str, int] = Field(default_factory=dict)
    near_duplicate_chunks: int = 0  # of duplicate_chunks: near (not exact) duplicates
    earlier_run_duplicates: int = 0  # dropped: an earlier run already generated from (nearly) the same text
    chunk_max_tokens: int = 0
    chunk_overlap_tokens: int = 0
    chunk_min_chars: int = 0
    wall_s: float = 0.0


def generate_shard_parts(chunks: Manifest, shard: int) -> range:
    """The chunks parts that make up one generate shard (one part per shard when the chunk
    manifest does not plan shards)."""
    n_parts = len(chunks.shards_of("chunks"))
    starts = chunks.metrics.shard_parts if isinstance(chunks.metrics, ChunkMetrics) else []
    if not starts:
        return range(shard, shard + 1)
    return range(starts[shard], starts[shard + 1] if shard + 1 < len(starts) else n_parts)


class GenerateMetrics(_Metrics):
    VOLATILE = frozenset({"resumed_prompts", "checkpoints", "attempt_wall_s", "engine_start_s", "generate_s",
                          "output_tokens_per_s"})

    stage: Literal["generate"] = "generate"
    prompts: int = 0
    generations: int = 0
    resumed_prompts: int = 0  # done by an earlier attempt (checkpoints)
    generated_tokens: int = 0
    checkpoints: int = 0
    duplicates_dropped: int = 0
    prompts_too_long: int = 0
    parse_failures: dict[str, int] = Field(default_factory=dict)
    # The attempt that committed: engine start and generation are timed apart, so the speed of the
    # engine is not mixed with the cost of starting it.
    attempt_wall_s: float = 0.0
    engine_start_s: float = 0.0  # 0 when the engine was shared (server backend, tests)
    generate_s: float = 0.0
    output_tokens_per_s: float | None = None  # tokens generated by this attempt / generate_s

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """Rows of the shard's dropped_generations table, by reason (a prompt too long drops its n samples)."""
        samples = self.generations // self.prompts if self.prompts else 1
        counts = {**self.parse_failures, "duplicate": self.duplicates_dropped,
                  "prompt_too_long": self.prompts_too_long * samples}
        return {reason: n for reason, n in counts.items() if n}


class GenerateFigures(BaseModel):
    """What the last run of a DAG measured of generation, for sizing the next run's shards."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    model_id: str
    backend: str
    tensor_parallel_size: int
    engine_start_s: float  # one engine start (mean over the shards that started one)
    seconds_per_generation: float  # generate wall time per generation (prompt x n), at full batch


class SuiteRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dataset_suite: str
    version: str


class ExpectationOutcome(BaseModel):
    """One expectation's result, as a person (or the quarantine) needs it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    level: str  # "row", "dataset" or "contract"
    expectation: str
    column: str | list[str] | None = None
    success: bool
    expected: str | None = None
    bound: dict[str, Any] = Field(default_factory=dict)
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample_unexpected: list[str] = Field(default_factory=list)
    exception: str | None = None


class LengthStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int
    median: float
    p95: float
    max: int


class QualitySummary(BaseModel):
    """Validate's quality report in numbers, with where its files are."""

    model_config = ConfigDict(extra="forbid")

    rows: int = 0
    passed: int = 0
    quarantined: int = 0
    pass_rate: float = 0.0
    duplicate_rate: float = 0.0
    failed_expectations: dict[str, int] = Field(default_factory=dict)  # expectation -> rows quarantined
    parse_failures: dict[str, int] = Field(default_factory=dict)  # reason -> generations dropped
    dropped_generations: int = 0
    output_tokens: dict[str, LengthStats] = Field(default_factory=dict)  # per task type
    labels: dict[str, dict[str, int]] = Field(default_factory=dict)  # task type -> label -> passing rows
    # task type -> output length -> [passed rows, quarantined rows]: the distribution the scorecard compares
    output_length_counts: dict[str, dict[int, tuple[int, int]]] = Field(default_factory=dict)
    # The mix of every validated row (ValidateAggregate's, with the bigram sketches as distinct-2 shares)
    input_length_counts: dict[str, dict[int, int]] = Field(default_factory=dict)
    verbatim: dict[str, tuple[int, int]] = Field(default_factory=dict)
    scripts: dict[str, int] = Field(default_factory=dict)
    distinct_bigrams: dict[str, float] = Field(default_factory=dict)  # task type -> distinct / all output bigrams
    top_sources: dict[str, int] = Field(default_factory=dict)  # doc_id -> validated rows, largest first
    data_docs_uri: str | None = None
    report_uri: str | None = None
    summary_uri: str | None = None
    plots: dict[str, str] = Field(default_factory=dict)  # file name -> URI of each image


class BigramSketch(BaseModel):
    """Distinct-bigram diversity of some outputs, mergeable across partitions (validate/mix.py)."""

    model_config = ConfigDict(extra="forbid")

    bigrams: int = 0  # word bigrams of the outputs (a one-word output counts one)
    smallest: list[int] = Field(default_factory=list)  # the smallest distinct bigram hashes (uint64), sorted


class ValidateAggregate(BaseModel):
    """What one validate partition (one generate shard) found, in numbers small enough for the
    reduce to add up: the dataset-level expectations and the quality report are computed from these
    (and from the partitions' `example_keys`), never from the rows."""

    model_config = ConfigDict(extra="forbid")

    shard: int | None = None  # None: the whole run (the partitions added up)
    rows: int = 0
    passed: int = 0
    repeats: int = 0  # rows repeating an (input, output) pair of an earlier row of the same shard
    failed_expectations: dict[str, int] = Field(default_factory=dict)  # expectation -> rows quarantined
    parse_failures: dict[str, int] = Field(default_factory=dict)  # of the generate shard
    dropped_generations: int = 0
    # task type -> output length (tokens) -> [passed rows, quarantined rows]
    lengths: dict[str, dict[int, tuple[int, int]]] = Field(default_factory=dict)
    labels: dict[str, dict[str, int]] = Field(default_factory=dict)  # task type -> label -> passed rows
    unit: str = ""  # what `lengths` count: tokens of the model's tokenizer, or the bytes / 4 estimate
    # The mix of every validated row (validate/mix.py): task type -> input-length bucket -> rows;
    # task type -> (answers found verbatim in their passage, answers checked); writing system -> rows;
    # task type -> output bigram sketch; doc_id -> rows (the most productive documents only).
    input_lengths: dict[str, dict[int, int]] = Field(default_factory=dict)
    verbatim: dict[str, tuple[int, int]] = Field(default_factory=dict)
    scripts: dict[str, int] = Field(default_factory=dict)
    bigrams: dict[str, BigramSketch] = Field(default_factory=dict)
    sources: dict[str, int] = Field(default_factory=dict)
    row_result: dict[str, Any] = Field(default_factory=dict)  # the row suite's GX result over the shard


class ValidateMetrics(_Metrics):
    VOLATILE = frozenset({"validation_s"})

    stage: Literal["validate"] = "validate"
    examples_in: int = 0
    passed: int = 0
    quarantined: int = 0
    suite: SuiteRef
    expectations: list[ExpectationOutcome] = Field(default_factory=list)
    validation_s: float = 0.0
    quality: QualitySummary = Field(default_factory=QualitySummary)
    aggregate: ValidateAggregate | None = None  # a partition's (the stage's own manifest has none)


class PublishedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str


class Approval(BaseModel):
    """A person's decision on publishing a run (the approval gate before publish, when required)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "not_required"]  # a rejection or a timeout fails the run: nothing is published
    reviewer: str | None = None
    note: str | None = None
    decided_at: str | None = None


class PublishMetrics(_Metrics):
    stage: Literal["publish"] = "publish"
    dataset_uri: str
    publish_mode: str
    examples: int = 0  # rows the dataset holds
    # Of them, rows this publish added: 0 when the Hub target already held the files (no commit).
    examples_added: int = 0
    duplicates_skipped: int = 0
    near_duplicates_skipped: int = 0  # append: new rows that nearly repeat a row of the dataset (not counted above)
    documents: int = 0
    examples_per_task_type: dict[str, int] = Field(default_factory=dict)
    files: dict[str, PublishedFile] = Field(default_factory=dict)
    hub_url: str | None = None
    hub_commit_sha: str | None = None
    # True when this publish's commit holds the files (also one whose answer was lost and that a retry
    # found on the branch); False when the repo already held them.
    hub_new_commit: bool | None = None
    hub_pr_url: str | None = None
    export_uri: str | None = None
    approval: Approval | None = None  # who approved publishing (require_approval), or "not_required"
    export_snapshot_uri: str | None = None  # the complete snapshot the export's _latest.json names
    hub_tag: str | None = None  # the release tag on the Hub commit (release.tag_name); None: no Hub commit


# ---- Releases (bonito_tasks/release): a run's scorecard, and its drift against the last release's.

SCORECARD_VERSION = 2  # 2: input lengths, verbatim answers, scripts, bigram diversity, top sources


class TaskScore(BaseModel):
    """One task type of a run's scorecard."""

    model_config = ConfigDict(extra="ignore")  # a newer scorecard read as a baseline: what we know of it

    rows: int = 0  # validated rows (passed + quarantined)
    passed: int = 0
    pass_rate: float = 0.0
    share: float = 0.0  # of the run's passing rows
    output_tokens: LengthStats | None = None
    labels: dict[str, int] = Field(default_factory=dict)  # label -> passing rows (classification task types)
    output_lengths: dict[int, int] = Field(default_factory=dict)  # output length (tokens) -> passing rows
    # Of every validated row of the task type (version 2): input-length bucket (estimated tokens) -> rows,
    # the share of answers found verbatim in their passage (extractive types), distinct-2 of the outputs
    input_lengths: dict[int, int] = Field(default_factory=dict)
    verbatim_share: float | None = None
    distinct_bigrams: float | None = None


class Scorecard(BaseModel):
    """A run's numbers that tonight is compared on with the last release (from its aggregates,
    never from the rows): `scorecard.json` in the compare folder and `.bonito/scorecard.json` of the
    published dataset."""

    model_config = ConfigDict(extra="ignore")

    version: int = SCORECARD_VERSION
    dag_id: str = ""
    run_id: str = ""
    release_tag: str = ""  # the Hub tag its publish makes (release.tag_name)
    rows: int = 0
    passed: int = 0
    pass_rate: float = 0.0
    duplicate_rate: float = 0.0
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)  # expectation -> rows quarantined
    parse_failures: dict[str, int] = Field(default_factory=dict)  # reason -> generations dropped
    length_unit: str = "tokens"
    task_types: dict[str, TaskScore] = Field(default_factory=dict)
    documents: int | None = None  # chunked documents (None: chunk metrics not found)
    chunks: int | None = None
    chunk_filters: dict[str, int] = Field(default_factory=dict)  # reason -> chunks dropped before generation
    duplicate_chunks: int | None = None
    scripts: dict[str, int] = Field(default_factory=dict)  # writing system of the inputs -> validated rows
    top_sources: dict[str, int] = Field(default_factory=dict)  # doc_id -> validated rows, the ten largest


DriftSeverity = Literal["ok", "warning", "failure", "not_computed"]


class DriftCheck(BaseModel):
    """One comparison of tonight with the baseline: a distribution (Great Expectations'
    expect_column_kl_divergence_to_be_less_than, the baseline's histogram as its partition object)
    or a rate (its change)."""

    model_config = ConfigDict(extra="forbid")

    name: str  # e.g. "labels of yes_no", "pass rate of extractive"
    kind: Literal["distribution", "rate"]
    expectation: str  # the GX expectation, or "rate_change"
    baseline: Any = None  # the baseline's value (a rate, or the distribution's shares)
    tonight: Any = None
    value: float | None = None  # the KL divergence, or tonight - baseline
    warning: float | None = None  # the thresholds it was held to (None: that severity off)
    failure: float | None = None
    severity: DriftSeverity = "ok"
    note: str = ""  # why it could not be computed, what it means

    def line(self) -> str:
        """The check as the on-call reads it: expectation, baseline value, tonight's, threshold."""
        def show(v: Any) -> str:
            if isinstance(v, dict):
                return "{" + ", ".join(f"{k}: {show(x)}" for k, x in list(v.items())[:8]) + "}"
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        bound = self.failure if self.severity == "failure" else self.warning
        measure = "KL divergence" if self.kind == "distribution" else "change"
        value = "not computed" if self.value is None else f"{self.value:+.4g}" if self.kind == "rate" \
            else f"{self.value:.4g}"
        return (f"{self.severity.upper()}: {self.name} ({self.expectation}): {measure} {value}, threshold "
                f"{show(bound)}; baseline {show(self.baseline)}, tonight {show(self.tonight)}"
                + (f" ({self.note})" if self.note else ""))


class CompareMetrics(_Metrics):
    """The compare stage: tonight's scorecard and its drift checks against the last release."""

    stage: Literal["compare"] = "compare"
    verdict: Literal["first_release", "pass", "warning", "failure", "review"] = "pass"
    baseline_run: str | None = None  # the run whose release is the baseline
    baseline_tag: str | None = None
    baseline_source: str | None = None  # where the baseline was read
    baseline_note: str = ""  # first release, unreadable, older version...
    checks: list[DriftCheck] = Field(default_factory=list)
    failures: int = 0
    warnings: int = 0
    scorecard: Scorecard = Field(default_factory=Scorecard)
    baseline: Scorecard | None = None
    plots: dict[str, str] = Field(default_factory=dict)  # file name -> URI (tonight vs the baseline)
    scorecard_uri: str | None = None
    wall_s: float = 0.0


class CombinedMetrics(_Metrics):
    """Metrics of a manifest that combines the partitions of a stage: the partitions' metrics
    stay in their own manifests."""

    stage: Literal["combined"] = "combined"
    partitions: int = 0


MetricsT = TypeVar("MetricsT", bound=_Metrics)

StageMetrics = Annotated[
    PlanMetrics | ExtractMetrics | ChunkMetrics | GenerateMetrics | ValidateMetrics | PublishMetrics
    | CompareMetrics | CombinedMetrics,
    Field(discriminator="stage"),
]


class Manifest(BaseModel):
    """The commit marker of one stage (or one partition of a partitioned stage)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    stage: str
    dag_id: str
    run_id: str
    uri: str  # where this manifest lives
    shards: list[ShardRef] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)  # rows per table
    metrics: StageMetrics
    # What the stage read and how, the parts of its reuse key (stage.py): the stages it declares it
    # reads, the content fingerprints of the manifests it read, the hash of its slice of the run
    # config, the hash of its code, and the key over all of them.
    reads: list[str] = Field(default_factory=list)
    input_manifest_sha256: list[str] = Field(default_factory=list)
    config_sha256: str
    code_version: str
    reuse_key: str = ""  # "": written before reuse keys (never reused)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    def shards_of(self, table: str) -> list[ShardRef]:
        return [s for s in self.shards if s.table == table]

    def rows_of(self, table: str) -> int:
        return sum(s.rows for s in self.shards_of(table))

    def metrics_as(self, kind: type[MetricsT]) -> MetricsT:
        """This manifest's metrics as the model its stage writes (`kind`); a manifest of another
        stage is a TypeError naming both."""
        if not isinstance(self.metrics, kind):
            raise TypeError(f"{self.uri} holds {type(self.metrics).__name__}, not {kind.__name__}")
        return self.metrics

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def sha256(self) -> str:
        """Content hash of what the stage committed, independent of when it was written."""
        return sha256_hex(canonical_json(self.model_dump(exclude={"created_at", "metrics"})))

    @property
    def content_sha256(self) -> str:
        """Fingerprint of what the stage committed (its parts and the non-volatile metrics), not of
        how or when: a stage redone with the same result has the same fingerprint, so the stages
        that read it stay reusable."""
        metrics = self.metrics.model_dump(exclude=set(self.metrics.VOLATILE))
        shards = [(s.table, s.path, s.rows, s.sha256) for s in self.shards]
        return sha256_hex(canonical_json({"stage": self.stage, "shards": shards, "metrics": metrics}))


class CheckpointMarker(BaseModel):
    """`_checkpoint-NNNNN.json` of a generate shard, written after its parts: the prompts they hold,
    valid for attempts with the same reuse key."""

    model_config = ConfigDict(extra="forbid")

    reuse_key: str
    prompts: list[int]
    shards: list[ShardRef]
    counts: dict[str, int]


class CheckFindings(BaseModel):
    """What a failed check found, structured (`ValidationFailed.findings`, `StageFailure.details`):
    the failed expectations (GX outcomes: name, level, expectation, observed value, bound...) and,
    for the validate gate, the rows it saw, what it quarantined and where the reports are."""

    model_config = ConfigDict(extra="ignore")  # _failure.json files of older releases hold other keys

    suite: str | None = None  # the suite's name
    suite_version: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    rows: int = 0
    generate_shards: int = 0
    dropped_generations: int = 0
    failed: list[dict[str, Any]] = Field(default_factory=list)
    schema_problems: list[str] = Field(default_factory=list)  # the examples table breaks the contract
    quarantined: dict[str, int] = Field(default_factory=dict)  # expectation -> rows quarantined
    quarantine_uri: str | None = None
    data_docs_uri: str | None = None
    result_uri: str | None = None


class StageFailure(BaseModel):
    """Why a stage (or one partition of it) did not commit: `_failure.json` in its folder, written by
    the stage harness when the stage's work raised, removed when an attempt commits."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    partition: int | None = None
    error: str  # the exception's type
    message: str
    permanent: bool  # a PermanentFailure: a retry cannot fix it
    details: CheckFindings = Field(default_factory=CheckFindings)  # what a failed check found
    failed_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


# ---- The run summary: what each stage of one run committed, for the log, XCom and summary.json.


class GenerateSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: int
    shards_committed: int
    prompts: int = 0
    examples: int = 0
    dropped_generations: int = 0
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)  # reason -> rows of dropped_generations
    generated_tokens: int = 0
    wall_s: float = 0.0  # the committing attempts, engine starts included
    engine_start_s: float = 0.0
    generate_s: float = 0.0
    output_tokens_per_s: float | None = None  # while generating (engine starts excluded)
    gpu_hours: float | None = None


class FailureCause(BaseModel):
    """Why the run failed, as the on-call needs it first: the stage, its message, and the findings
    behind it (failed expectations with observed value and threshold, quarantine counts, rejects)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    partition: int | None = None
    error: str
    message: str
    failed_expectations: list[ExpectationOutcome] = Field(default_factory=list)
    quarantined: dict[str, int] = Field(default_factory=dict)  # expectation -> rows quarantined
    rejects_by_reason: dict[str, int] = Field(default_factory=dict)  # extract: files rejected, by reason
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)  # generate: generations dropped, by reason


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dag_id: str
    run_id: str
    run_folder: str  # where the run's artifacts are in the store
    stages: dict[str, str]  # stage -> "committed", "not committed", "failed", "3/4 shards committed", ...
    failed_stage: str | None = None  # the first stage that failed (None: no stage left a failure)
    cause: FailureCause | None = None
    # What each committed stage reported (None: the stage did not commit).
    extracted: ExtractMetrics | None = None
    chunked: ChunkMetrics | None = None
    generated: GenerateSummary | None = None
    validated: ValidateMetrics | None = None
    published: PublishMetrics | None = None
