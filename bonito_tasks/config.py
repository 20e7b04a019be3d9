"""The typed, validated configuration of one run. Its fields are the DAG's params, one to one."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

from bonito_tasks.contracts import canonical_json, sha256_hex
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.task_types import normalize_task_type

# Bonito was trained on inputs truncated to 1024 tokens. A chunk leaves room in that budget for
# the prompt's markers and task-type name and for the generated tokens.
TRAINING_INPUT_TOKENS = 1024
PROMPT_OVERHEAD_TOKENS = 32
DEFAULT_MODEL = "BatsResearch/bonito-v1"
NOT_BLANK: JsonDict = {"minLength": 1, "pattern": r"\S"}


class RunConfig(BaseModel):
    # validate_default: a default such as 240 for a float field is stored as 240.0, as it reads back
    # from JSON, so the config hash is the same in every process.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Where documents come from and where artifacts go.
    # NOT_BLANK: the form refuses an empty or blank value too (the validator below words the error).
    source: str = Field(description="Folder, file or s3://bucket/prefix of documents (the formats: "
                                    "docs/design.md, Extract and chunk).",
                        json_schema_extra=NOT_BLANK)
    store: str = Field(description="Artifact store root: a local folder or s3://bucket/prefix.",
                       json_schema_extra=NOT_BLANK)
    max_file_bytes: int = Field(50 * 2**20, gt=0, description="Files larger than this are rejected.")
    include: list[str] = Field(
        default=["**"], description="Globs (relative to source) of files to read, e.g. ['**/*.pdf']."
    )
    exclude: list[str] = Field(default=[], description="Globs (relative to source) of files to skip.")
    text_column: str = Field(
        "text", min_length=1, description="Column holding the text in .jsonl .csv .parquet and saved HF datasets."
    )
    full_refresh: bool = Field(
        False, description="Reprocess every document (and rejected file), ignoring the ledger; by default a "
                           "document is processed only for what the ledger lacks (task types, model, publish target)."
    )
    retry_rejects: bool = Field(
        False, description="Read again the files the ledger remembers as rejected (by default an unchanged "
                           "rejected file is skipped and counted in skipped_rejects)."
    )

    # Scale-out: extract and chunk run as partitions of the source listing, one mapped task each.
    partition_bytes: int = Field(
        256 * 2**20, gt=0, description="Bytes of source files per extract/chunk partition (the last may hold less)."
    )
    max_partitions: int = Field(
        64, ge=1, le=1024, description="Most extract/chunk partitions (mapped tasks) per run (Airflow maps <= 1024)."
    )

    # What to generate.
    task_types: list[str] = Field(
        default=["exqa"], min_length=1, description="Bonito task types (short or full names)."
    )

    # Chunking.
    chunk_max_tokens: int | None = Field(
        None, gt=16, description="Most tokens per chunk; default leaves room for prompt and output in 1024."
    )
    chunk_shard_size: int | None = Field(
        None, gt=0, le=10_000_000,
        description="Chunks per generate shard (one mapped task each); empty: auto, so engine start is a small "
                    "share of each generate task (see gpu_slots, target_shard_minutes).",
    )
    gpu_slots: int = Field(
        1, ge=1, le=1024, description="Slots of the gpu pool (BONITO_GPU_SLOTS): auto sizing makes at least this many "
                                      "shards when there is enough work.",
    )
    target_shard_minutes: float = Field(
        60, gt=0, description="Auto sizing: about how long one generate shard should run, judged by the speed and "
                              "engine start of this DAG's last run on the same model (no figures: one shard per slot).",
    )
    chunk_overlap_tokens: int = Field(
        0, ge=0, description="Tokens of trailing whole sentences repeated at the start of the next chunk."
    )
    chunk_min_chars: int = Field(32, ge=0, description="Chunks shorter than this (boilerplate fragments) are dropped.")

    # Chunk quality filters, before generation (bonito_tasks/chunk/quality.py): a chunk failing one is
    # dropped and counted by reason in the chunk manifest, the run summary and the dataset card.
    quality_filters: bool = Field(True, description="Drop chunks that fail the quality filters below before "
                                                    "generation (counted by reason).")
    quality_min_words: int = Field(5, ge=0, description="Quality: chunks with fewer words (runs of letters) "
                                                         "are dropped (too_few_words).")
    quality_max_digit_ratio: float = Field(
        0.25, ge=0, le=1, description="Quality: most digits per non-space character (digit_ratio).")
    quality_max_symbol_ratio: float = Field(
        0.1, ge=0, le=1, description="Quality: most symbols (# | * { } < > = ~ dot leaders, bullets, box drawing...) "
                                     "per non-space character (symbol_ratio).")
    quality_min_mean_word_length: float = Field(
        3.0, ge=0, description="Quality: shortest mean word length in characters (mean_word_length).")
    quality_max_mean_word_length: float = Field(
        12.0, gt=0, description="Quality: longest mean word length in characters (mean_word_length).")
    quality_max_boilerplate_lines: float = Field(
        0.4, ge=0, le=1, description="Quality: largest share of characters on boilerplate lines (cookie and privacy "
                                     "notices, navigation, sign-up prompts, 'all rights reserved') (boilerplate).")
    quality_max_unpunctuated_lines: float = Field(
        0.85, ge=0, le=1, description="Quality: largest share of lines ending without punctuation, wrapped lines "
                                      "not counted, in chunks of 3+ lines (unpunctuated_lines: contents, tables).")
    quality_max_repeated_lines: float = Field(
        0.3, ge=0, le=1, description="Quality: largest share of characters on lines that repeat an earlier line "
                                     "(repeated_lines).")
    quality_max_repeated_ngrams: float = Field(
        0.3, ge=0, le=1, description="Quality: largest share of word 5-grams that repeat an earlier one "
                                     "(repeated_ngrams).")
    quality_languages: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]] = Field(
        default=[], description="Quality: keep only chunks in these languages (ISO 639-1 codes as py3langid "
                                "names them, e.g. en, de); empty: any language.")
    near_dup_threshold: float | None = Field(
        0.8, ge=0.5, le=1, description="Near-duplicate chunks (MinHash of word 5-grams, estimated Jaccard at or "
        "over this) are kept once, the others' places in also_in, like exact duplicates; empty: exact ones only.")
    near_dup_across_runs: bool = Field(
        True, description="Also drop chunks that nearly repeat a chunk an earlier run of this DAG generated from "
                          "for the same model and publish target (signatures kept next to the ledger).")
    example_near_dup_threshold: float | None = Field(
        0.9, ge=0.5, le=1, description="Append mode: a new example whose instruction and output nearly repeat "
        "a published one (MinHash, the shared passage left out) is skipped and counted; empty: off.")

    # Model and engine (vLLM in-process, or an OpenAI-compatible server such as `vllm serve`).
    backend: Literal["vllm", "server"] = Field(
        "vllm", description="vllm: engine in the task (GPU worker); server: OpenAI-compatible completions endpoint "
                            "from connection bonito_vllm_default.")
    server_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight per task (server backend).")
    served_model_name: str | None = Field(None, description="Model name the server serves; default: model_id.")
    model_id: str = Field(DEFAULT_MODEL, description="Hub id or local path of the Bonito model.")
    model_revision: str | None = Field(None, description="Hub revision (commit) to pin; ignored for a local path.")
    max_model_len: int = Field(
        2048, gt=0, description="vLLM max_model_len (bonito-v1's 32768 does not fit small GPUs)."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Model weights dtype for vLLM."
    )
    quantization: str | None = Field(None, description="vLLM quantization, e.g. 'awq' for an AWQ build.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM batch size limit; default: vLLM's.")
    seed: int = Field(0, description="Engine seed (vLLM's CPU build rejects per-request seeds).")
    checkpoint_prompts: int = Field(
        256, gt=0, description="Prompts per generate checkpoint (a retry resumes after the last)."
    )
    generate_budget_minutes: float = Field(
        240, gt=0, description="A generate task (one shard) running longer than this raises a "
        "deadline alert; it goes on.")

    # Sampling (Bonito's defaults).
    max_tokens: int = Field(256, gt=0, description="Most tokens generated per example.")
    temperature: float = Field(
        0.5, ge=0, description="Sampling temperature for every task type (Bonito's default: 0.5)."
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=16, description="Generations per prompt.")

    # Validation: row bounds (tokens estimated as UTF-8 bytes / 4) and dataset thresholds.
    min_output_tokens: int = Field(1, ge=1, description="Shortest valid example output, in tokens (bytes / 4).")
    max_input_tokens: int = Field(2048, gt=0, description="Longest valid example input, in tokens (bytes / 4).")
    max_output_tokens: int = Field(1024, gt=0, description="Longest valid example output, in tokens (bytes / 4).")
    min_pass_rate: float = Field(
        0.9, ge=0, le=1, description="Validation fails when fewer rows pass (the rest are quarantined)."
    )
    min_rows: int = Field(1, ge=0, description="Validation fails when fewer rows pass.")
    max_duplicate_rate: float = Field(
        0.1, ge=0, le=1, description="Validation fails when more rows repeat an (input, output) pair."
    )
    max_label_share: float = Field(
        0.9, gt=0, le=1, description="Validation fails when one label takes more of a classification task's rows."
    )

    # Drift against the last release published to the same target (bonito_tasks/release, docs/releases.md):
    # distributions by Great Expectations' KL divergence, rates by their change; None: that severity is off.
    drift_kl_warning: float | None = Field(
        0.1, gt=0, description="Drift check: KL divergence of a distribution (labels, output and input lengths, "
        "task-type mix, writing systems) from the last release's over which the run logs a warning; empty: none.")
    drift_kl_failure: float | None = Field(
        0.5, gt=0, description="Drift check: KL divergence over which the run fails (or, with approval, waits for "
        "a person who sees the comparison); empty: drift never fails a run.")
    drift_rate_warning: float | None = Field(
        0.05, gt=0, le=1, description="Drift check: change of a rate (pass rate per task type, duplicate rate, "
        "verbatim answers, bigram diversity) from the last release's over which the run logs a warning; empty: none.")
    drift_rate_failure: float | None = Field(
        0.2, gt=0, le=1, description="Drift check: change of a rate over which the run fails (or waits for "
        "approval); empty: rates never fail a run.")

    # Publishing.
    hub_repo_id: str | None = Field(
        None, description="Hugging Face dataset repo to upload to; empty: local folder only."
    )
    hub_private: bool = Field(True, description="Create the Hub repo private.")
    license: str = Field("other", description="License written into the dataset card.")
    license_name: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="With license 'other': a short id of the license for the card (the Hub asks for one), "
                    "e.g. acme-internal-1.0; empty: 'unspecified'.")
    license_link: str | None = Field(
        None, pattern=r"^(https?://\S+|LICENSE|LICENSE\.md)$",
        description="With license 'other': URL of the license text, or LICENSE / LICENSE.md in the repo "
                    "(the Hub asks for one); empty: the card's License section, which says no text was given.")
    dataset_language: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]] = Field(
        default=["en"],
        description="Language codes (ISO 639-1 or 639-3, e.g. en, de) of the dataset's text, for the card's "
                    "`language`. Bonito writes its instructions in English: add the documents' language(s) "
                    "when they are not English; empty: none stated. Not detected from the text.")
    publish_mode: Literal["overwrite", "append", "pr"] = Field(
        "overwrite",
        description="overwrite: the dataset becomes this run's snapshot; append: add this run's new rows "
        "(deduplicated on example_id and on input+output); pr: open a Hub pull request with the snapshot.",
    )
    export_s3_uri: str | None = Field(
        None, description="Also export the dataset (Parquet + card) to this s3://bucket/prefix; empty: no export."
    )
    require_approval: bool = Field(
        False, description="Wait for a person to approve the validated examples (in the UI) before publishing, "
        "also where the deployment does not ask for it (BONITO_REQUIRE_APPROVAL; off never lifts the deployment's "
        "rule); a rejection or a timeout fails the run.")
    approval_timeout_minutes: float = Field(
        1440, gt=0, description="How long the approval waits for a decision before the run fails.")

    @field_validator("task_types")
    @classmethod
    def _normalize_task_types(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_task_type(v) for v in value))

    @field_validator("source", "store")
    @classmethod
    def _required(cls, value: str, info) -> str:
        if not value.strip():
            raise ValueError(f"{info.field_name} is empty: set it in the trigger form or "
                             f"BONITO_{info.field_name.upper()}")
        return value

    @field_validator("hub_repo_id", "model_revision", "quantization", "export_s3_uri", "served_model_name",
                     "license_name", "license_link", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def _fit_budget(self) -> RunConfig:
        # Cross-field rules: each error names the params in conflict and their values (check_config).
        chunk_max_tokens = self.chunk_max_tokens
        if chunk_max_tokens is None:
            budget = min(TRAINING_INPUT_TOKENS, self.max_model_len) - PROMPT_OVERHEAD_TOKENS - self.max_tokens
            if budget <= 16:
                raise _conflict(f"max_tokens ({self.max_tokens}) leaves no room for a chunk: "
                                f"min({TRAINING_INPUT_TOKENS}, max_model_len ({self.max_model_len})) - prompt "
                                f"({PROMPT_OVERHEAD_TOKENS}) - max_tokens = {budget} tokens (more than 16 needed)",
                                max_tokens=self.max_tokens, max_model_len=self.max_model_len)
            object.__setattr__(self, "chunk_max_tokens", budget)
            chunk_max_tokens = budget
        needed = chunk_max_tokens + PROMPT_OVERHEAD_TOKENS + self.max_tokens
        if needed > self.max_model_len:
            raise _conflict(
                f"chunk_max_tokens ({self.chunk_max_tokens}) + prompt ({PROMPT_OVERHEAD_TOKENS}) + "
                f"max_tokens ({self.max_tokens}) = {needed} exceeds max_model_len ({self.max_model_len})",
                chunk_max_tokens=chunk_max_tokens, max_tokens=self.max_tokens, max_model_len=self.max_model_len,
            )
        if self.chunk_overlap_tokens >= chunk_max_tokens // 2:
            raise _conflict(f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be under half of "
                            f"chunk_max_tokens ({self.chunk_max_tokens})",
                            chunk_overlap_tokens=self.chunk_overlap_tokens, chunk_max_tokens=chunk_max_tokens)
        return self

    def sampling_params(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p, "n": self.n}

    def sha256(self) -> str:
        return sha256_hex(canonical_json(self.model_dump()))


def _conflict(message: str, **params: int) -> PydanticCustomError:
    """A cross-field rule broken by `params` (name -> value), kept in the error's context."""
    return PydanticCustomError("params_conflict", message, {"params": params})


class ConfigRejected(PermanentFailure):
    """The run's params (or the scheduled runs' settings) make no valid RunConfig."""


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem: the param(s) at fault with their values, then what is wrong."""
    lines = []
    for e in error.errors():
        if e["type"] == "params_conflict":
            params = ", ".join(f"{k}={v}" for k, v in e["ctx"]["params"].items())
            lines.append(f"params in conflict: {params}: {e['msg']}")
        elif e["loc"]:
            lines.append(f"{e['loc'][0]}={e['input']!r}: {e['msg']}")
        else:
            lines.append(e["msg"])
    return lines


def check_config(values: dict, origin: str = "params") -> RunConfig:
    """RunConfig(**values), or ConfigRejected naming every bad or conflicting param with its value."""
    try:
        return RunConfig(**values)
    except ValidationError as error:
        problems = describe_errors(error)
        raise ConfigRejected(f"{origin} rejected ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)) from None
