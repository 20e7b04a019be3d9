"""Expectation suites as code, built from the run config. Bump SUITE_VERSION whenever a check changes.

Every expectation carries a stable name in `meta["name"]` (results, metrics, the quarantine's
`failed_expectations` and the failure message cite it) and a `meta["level"]`:
- `contract`: the producer broke the table contract (a null in a non-nullable column); the run fails.
- `row`: a failing row goes to quarantine; the other rows go on.
- `dataset` (the second suite): thresholds over the whole run, from params; a breach fails the run.
  It runs on the dataset summary, one row of numbers computed from the row checks' outcome
  (`dataset_summary`): a partitioned validate adds them up from its partitions' aggregates.

The row suite runs on the row profile (see profile.py), not on the raw text.

Label sets. Bonito's training templates (P3 remixed into ctga-v1) do not publish one label set per
task type, so these are assumptions, taken from the answer choices of the P3 templates behind each
task type and compared after lower-casing and trimming spaces and end punctuation:
- ynqa: yes, no.
- nli (ANLI/MNLI/CB-style templates): yes/maybe/no, true/neither/false, correct/inconclusive/
  incorrect, always/sometimes/never, guaranteed/possible/impossible, "it's impossible to say",
  entailment/neutral/contradiction.
- te (RTE-style): yes, no, true, false, entailment, not entailment.
- paraphrase_id (MRPC/QQP/PAWS-style): yes, no, true, false, equivalent, not equivalent,
  duplicate, not duplicate.
- sentiment, topic_class and coref have open label sets (star ratings, topic names, the
  referent's words): only their shape is checked, a short answer of at most SHAPE_MAX_TOKENS.
- mcqa: the answer (or its option letter) appears in the input outside the context.
- exqa: the answer is a substring of the chunk text (exact, else ignoring case and spacing).
Label share (the max_label_share threshold) is checked for the classification task types with
at least LABEL_SHARE_MIN_ROWS passing rows; fewer rows say nothing about skew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES
from bonito_tasks.format import CONTEXT_PLACEHOLDER, MARKERS
from bonito_tasks.validate.profile import BYTES_PER_TOKEN

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.expectations import Expectation

EXAMPLES_SUITE = "bonito_examples"
DATASET_SUITE = "bonito_examples_dataset"
SUITE_VERSION = "4"

LABEL_SETS: dict[str, list[str]] = {
    "ynqa": ["yes", "no"],
    "nli": ["yes", "maybe", "no", "true", "neither", "false", "correct", "inconclusive", "incorrect", "always",
            "sometimes", "never", "guaranteed", "possible", "impossible", "it's impossible to say",
            "entailment", "neutral", "contradiction"],
    "te": ["yes", "no", "true", "false", "entailment", "not entailment", "not_entailment"],
    "paraphrase_id": ["yes", "no", "true", "false", "equivalent", "not equivalent", "duplicate", "not duplicate"],
}
SHAPE_MAX_TOKENS: dict[str, int] = {"sentiment": 5, "topic_class": 8, "coref": 16}
CLASSIFICATION = ["ynqa", "nli", "te", "paraphrase_id", "sentiment", "topic_class"]
LABEL_SHARE_MIN_ROWS = 20


def _meta(name: str, level: str) -> dict:
    return {"name": name, "level": level}


def label_tasks(config: RunConfig) -> list[str]:
    """Task types of the run whose normalized output is a label (label set or share checked)."""
    return [t for t in config.task_types if t in LABEL_SETS or t in CLASSIFICATION]


def shape_tasks(config: RunConfig) -> list[str]:
    return [t for t in config.task_types if t in SHAPE_MAX_TOKENS]


def example_expectations(config: RunConfig) -> list[Expectation]:
    import great_expectations.expectations as gxe

    def in_set(name: str, column: str, values: list, description: str) -> Expectation:
        return gxe.ExpectColumnValuesToBeInSet(
            column=column, value_set=values, meta=_meta(name, "row"), description=description
        )

    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(
            column=f"{column}__present", meta=_meta(f"not_null:{column}", "contract"), description=f"{column} not null"
        )
        for column in EXAMPLES.names
    ]
    expectations += [
        in_set("requested_task_type", "task_type", sorted(config.task_types),
               f"one of the run's task types ({', '.join(config.task_types)})"),
        gxe.ExpectColumnValuesToBeBetween(
            column="input_tokens", min_value=1, max_value=config.max_input_tokens, meta=_meta("input_length", "row"),
            description=f"input between 1 and {config.max_input_tokens} tokens (UTF-8 bytes / {BYTES_PER_TOKEN})",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="output_tokens", min_value=config.min_output_tokens, max_value=config.max_output_tokens,
            meta=_meta("output_length", "row"),
            description=f"output not empty, between {config.min_output_tokens} and {config.max_output_tokens} "
                        f"tokens (UTF-8 bytes / {BYTES_PER_TOKEN})",
        ),
        *(
            in_set(f"no_leftover_markup:{side}", f"{side}_has_markup", [False],
                   f"no Bonito markers {', '.join(MARKERS)} and no {CONTEXT_PLACEHOLDER} in the generated {side} "
                   "(the chunk text it quotes may hold them)")
            for side in ("input", "output")
        ),
        in_set("unique_input_output", "repeats_input_output", [False],
               "each (input, output) pair occurs once (later repeats are quarantined)"),
        in_set("known_chunk", "chunk_found", [True], "chunk_id is a chunk of this run's chunk stage"),
        in_set("instruction_not_context_copy", "copies_context", [False],
               "the input is more than the chunk text: at least a few tokens of instruction around it"),
    ]
    if "exqa" in config.task_types:
        expectations.append(in_set("exqa_answer_in_context", "answer_in_context", [True],
                                   "exqa: the answer is a span of the chunk text"))
    if "mcqa" in config.task_types:
        expectations.append(in_set("mcqa_answer_in_options", "answer_in_options", [True],
                                   "mcqa: the answer is one of the options listed in the input"))
    for task in label_tasks(config):
        if task in LABEL_SETS:
            expectations.append(in_set(f"{task}_label", f"label__{task}", LABEL_SETS[task],
                                       f"{task}: the output is one of {LABEL_SETS[task]}"))
    for task in shape_tasks(config):
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column=f"label_tokens__{task}", min_value=1, max_value=SHAPE_MAX_TOKENS[task],
            meta=_meta(f"{task}_label_shape", "row"),
            description=f"{task}: a short label of at most {SHAPE_MAX_TOKENS[task]} tokens",
        ))
    return expectations


def dataset_expectations(config: RunConfig, share_tasks: list[str]) -> list[Expectation]:
    """Thresholds over the dataset summary (one row): `passed` (the share of rows that passed every
    row-level expectation), `passed_rows` (how many), `repeat` (the share of rows repeating an
    (input, output) pair) and `label_share__<task>` (the largest share of one label among the task's
    passing rows)."""
    import great_expectations.expectations as gxe

    expectations: list[Expectation] = [
        gxe.ExpectColumnMeanToBeBetween(
            column="passed", min_value=config.min_pass_rate, meta=_meta("min_pass_rate", "dataset"),
            description=f"at least {config.min_pass_rate:.0%} of the rows pass every row-level expectation",
        ),
        gxe.ExpectColumnSumToBeBetween(
            column="passed_rows", min_value=config.min_rows, meta=_meta("min_rows", "dataset"),
            description=f"at least {config.min_rows} rows pass",
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column="repeat", max_value=config.max_duplicate_rate, meta=_meta("max_duplicate_rate", "dataset"),
            description=f"at most {config.max_duplicate_rate:.0%} of the rows repeat an (input, output) pair",
        ),
    ]
    expectations += [
        gxe.ExpectColumnMaxToBeBetween(
            column=f"label_share__{task}", max_value=config.max_label_share,
            meta=_meta(f"max_label_share:{task}", "dataset"),
            description=f"{task}: no label takes more than {config.max_label_share:.0%} of the passing rows",
        )
        for task in share_tasks
    ]
    return expectations


def dataset_summary(rows: int, passed: int, repeats: int, label_counts: dict[str, dict[str, int]]
                    ) -> tuple[pa.Table, list[str]]:
    """The one-row table the dataset suite checks, and the task types whose label share it checks
    (classification tasks with at least LABEL_SHARE_MIN_ROWS passing rows). `label_counts`: task
    type -> label -> passing rows."""
    columns = {"passed": [passed / rows if rows else 0.0], "passed_rows": [passed],
               "repeat": [repeats / rows if rows else 0.0]}
    share_tasks = []
    for task, counts in label_counts.items():
        labelled = sum(counts.values())
        if task not in CLASSIFICATION or labelled < LABEL_SHARE_MIN_ROWS:
            continue
        columns[f"label_share__{task}"] = [max(counts.values()) / labelled]
        share_tasks.append(task)
    return pa.table(columns), share_tasks


def build_examples_suite(config: RunConfig) -> ExpectationSuite:
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=EXAMPLES_SUITE, expectations=example_expectations(config), meta={"version": SUITE_VERSION}
    )


def build_dataset_suite(config: RunConfig, share_tasks: list[str]) -> ExpectationSuite:
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=DATASET_SUITE, expectations=dataset_expectations(config, share_tasks), meta={"version": SUITE_VERSION}
    )
