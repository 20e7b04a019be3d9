"""The dataset card (README.md): YAML metadata the Hub and `datasets` read, then a description of
how the data was made, from which sources, under which license, and how to cite Bonito."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from string import Template
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import EXAMPLES, ChunkMetrics, QualitySummary, RunRef
from bonito_tasks.model_ref import looks_like_path
from bonito_tasks.publish.layout import DATA_DIR, PUBLISHED, SOURCES_FILE, SPLIT, Appended, TaskSplit
from bonito_tasks.task_types import TASK_TYPES

SAMPLE_ROWS = 3  # example rows shown per config
SAMPLE_CHARS = 160  # a sample's input and output are clipped to this many characters
UNSPECIFIED_LICENSE = "unspecified"  # license_name of license "other" when the run names none
OWN_LICENSE_SECTION = "README.md#license"  # license_link of license "other" when the run gives none

BONITO_CITATION = """\
@inproceedings{bonito:aclfindings24,
  title = {Learning to Generate Instruction Tuning Datasets for Zero-Shot Task Adaptation},
  author = {Nayak, Nihal V. and Nan, Yiyang and Trost, Avi and Bach, Stephen H.},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year = {2024},
  eprint = {2402.18334},
  archivePrefix = {arXiv},
  primaryClass = {cs.CL},
  url = {https://arxiv.org/abs/2402.18334}
}"""

FIELD_DESCRIPTIONS = {
    "example_id": "SHA-256 of the example's lineage key",
    "task_type": "Bonito task type (short name; one config per type)",
    "input": "the task instruction, with the source passage filled in",
    "output": "the response to the instruction",
    "messages": "the example as a chat: `[{role: user, content: input}, {role: assistant, content: output}]`",
    "doc_id": "SHA-256 of the source document's bytes (see `sources.jsonl`)",
    "chunk_id": "the passage the example was generated from",
    "char_start": "start of the passage in the document text",
    "char_end": "end (exclusive) of the passage in the document text",
    "sample_index": "which of the `n` generations for the passage",
    "model_id": "generating model",
    "model_revision": "model revision (Hub commit or content hash)",
    "sampling_params": "sampling parameters, canonical JSON",
    "run_id": "pipeline run that produced the example",
}

@dataclass
class RowFacts:
    """What the card says of the rows besides the splits' counts, gathered one part of the rows at a
    time (`add`): models, sampling parameters, runs, contributing documents, and the sample rows."""

    models: set[tuple[str, str]] = field(default_factory=set)
    sampling: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)
    documents: set[str] = field(default_factory=set)
    samples: pa.Table = field(default_factory=EXAMPLES.empty_table)  # the first rows (by example_id) per task type

    @classmethod
    def of(cls, rows: pa.Table) -> RowFacts:
        facts = cls()
        facts.add(rows)
        return facts

    def add(self, rows: pa.Table) -> None:
        rows = rows.select(EXAMPLES.names).cast(EXAMPLES)
        self.models |= {(m["model_id"], m["model_revision"])
                        for m in rows.group_by(["model_id", "model_revision"]).aggregate([]).to_pylist()}
        self.sampling |= set(pc.unique(rows["sampling_params"]).to_pylist())
        self.runs |= set(pc.unique(rows["run_id"]).drop_null().to_pylist())
        self.documents |= set(pc.unique(rows["doc_id"]).drop_null().to_pylist())
        both, kept = pa.concat_tables([self.samples, rows]), []
        for task_type in sorted(set(both["task_type"].to_pylist())):
            of_type = both.filter(pc.equal(both["task_type"], task_type))
            # take: a copy of the few rows kept, not a view of the part's buffers
            kept.append(of_type.take(pc.sort_indices(of_type, [("example_id", "ascending")])[:SAMPLE_ROWS]))
        self.samples = pa.concat_tables(kept or [EXAMPLES.empty_table()])


CARD_TEMPLATE = Template(
    """\
---
${metadata}---

# ${title}

Instruction-tuning examples generated with [Bonito](https://github.com/BatsResearch/bonito) from unlabeled
documents: ${n_examples} examples of ${n_task_types} task type(s), made from ${n_documents} source documents.
Each row pairs an `input` (a task instruction built around a passage of a source document) with its `output`,
and keeps the lineage back to the document, the passage and the generation settings.

## Configurations

| Config | Task type | Examples |
|---|---|---|
${config_rows}

```python
from datasets import load_dataset

dataset = load_dataset("${load_path}", "${first_config}", split="${split}")
```

Fine-tuning: the `messages` column is the chat format trl and chat templates read as they are:

```python
trainer = SFTTrainer(model="<your model>", train_dataset=dataset)  # from trl import SFTTrainer
text = tokenizer.apply_chat_template(dataset[0]["messages"], tokenize=False)
```
${export_note}
## Samples

A few rows of each config (first by `example_id`; text clipped to ${sample_chars} characters):
${samples}

## How it was made

- Model: ${models}
- Sampling parameters: ${sampling}
- Task types: ${task_types}
- Chunking: documents split into passages of at most ${chunk_max_tokens} tokens
- Pipeline run: ${run_link}${runs_note}
${chunk_filters}${quality}
## Source documents

${n_documents} documents (${n_contributing} contributed examples); media types: ${media_types}.
`${sources_file}` lists each document's `doc_id` (SHA-256 of its bytes), `source_uri`, `media_type` and
`size_bytes`. The document texts are not part of this dataset.

## Data fields

| Field | Type | Description |
|---|---|---|
${field_rows}

## License

${license}

## Citation

Bonito, the model that generated these examples:

```bibtex
${citation}
```
"""
)


def render_card(
    *,
    run: RunRef,
    config: RunConfig,
    splits: list[TaskSplit],
    facts: RowFacts,
    documents: pa.Table,
    quality: QualitySummary | None = None,
    plots: Sequence[tuple[str, str]] = (),
    export_note: str = "",
    review: str = "",
    chunking: ChunkMetrics | None = None,
    history: Appended | None = None,
    changes: str = "",
) -> str:
    """The card; `facts` of the rows the dataset holds (an indexed append: of this run's new rows, the
    rest from `history`), `quality` is validate's quality summary of this run, `plots` (label, path in the
    dataset) its images, `export_note` a paragraph on reading an S3 export (publish/export.py), `review`
    a line on who approved the publication.

    No local filesystem path goes into the card: a model loaded from a folder is shown by the
    folder's name and its content hash (the sources' paths are relative in `sources.jsonl`)."""
    n_examples = sum(s.rows for s in splits)
    title = config.hub_repo_id.split("/")[-1] if config.hub_repo_id else f"Bonito data of {run.dag_id} {run.run_id}"
    metadata: dict[str, Any] = {"language": list(config.dataset_language)} if config.dataset_language else {}
    metadata |= {"license": config.license}
    if config.license == "other":  # the Hub asks for a name and a link of a license it does not list
        metadata["license_name"] = config.license_name or UNSPECIFIED_LICENSE
        # without a link of its own, the card's License section, which says that no text was given
        metadata["license_link"] = config.license_link or OWN_LICENSE_SECTION
    metadata |= {
        "pretty_name": title,
        "task_categories": ["text-generation"],
        "tags": ["bonito", "synthetic", "instruction-tuning"],
        "size_categories": [size_category(n_examples)],
        "configs": dataset_configs(splits),
        "dataset_info": dataset_info(splits),
    }
    run_name = f"`{run.dag_id}` / `{run.run_id}`"
    config_rows = [f"| `default` | all | {n_examples} |"] + [
        f"| `{s.task_type}` | {TASK_TYPES.get(s.task_type, s.task_type)} | {s.rows} |" for s in splits
    ]
    if history is not None:  # an indexed append: the whole dataset's figures come from its stats
        models, sampling, n_runs = [tuple(m) for m in history.totals.models], history.totals.sampling, history.runs
        n_contributing = history.totals.contributing
    else:
        models, sampling, n_runs = sorted(facts.models), sorted(facts.sampling), len(facts.runs)
        n_contributing = len(facts.documents)
    media_types = Counter(documents.column("media_type").to_pylist())
    return CARD_TEMPLATE.substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True),
        title=title,
        n_examples=n_examples,
        n_task_types=len(splits),
        n_documents=documents.num_rows,
        n_contributing=n_contributing,
        config_rows="\n".join(config_rows),
        load_path=config.hub_repo_id or "path/to/this/folder",
        first_config=splits[0].task_type,
        split=SPLIT,
        export_note=export_note,
        sample_chars=SAMPLE_CHARS,
        samples="".join(_samples(facts.samples, t)
                        for t in sorted(set(facts.samples["task_type"].to_pylist()))).rstrip("\n"),
        models=", ".join(_model(model, revision) for model, revision in models),
        sampling=", ".join(f"`{params}`" for params in sampling),
        task_types=", ".join(f"{TASK_TYPES.get(t, t)} (`{t}`)" for t in config.task_types),
        chunk_max_tokens=config.chunk_max_tokens,
        run_link=f"[{run_name}]({run.run_url})" if run.run_url else run_name,
        runs_note=(f" (latest of {n_runs} runs whose rows the dataset holds)" if n_runs > 1 else "") + review,
        quality=_quality_section(quality, plots, run.run_id) + changes,  # changes: release/card.py
        chunk_filters=chunk_filter_section(chunking, run.run_id),
        media_types=", ".join(f"{media_type} ({count})" for media_type, count in sorted(media_types.items())),
        sources_file=SOURCES_FILE,
        field_rows="\n".join(f"| `{f.name}` | {_cell(f.type)} | {FIELD_DESCRIPTIONS.get(f.name, '')} |"
                             for f in PUBLISHED),
        license=_license(config),
        citation=BONITO_CITATION,
    )


def dataset_configs(splits: list[TaskSplit]) -> list[dict]:
    """A `default` config with every task type, then one config per task type."""

    def config(name: str, folder_glob: str) -> dict:
        return {"config_name": name, "data_files": [{"split": SPLIT, "path": f"{folder_glob}/*.parquet"}]}

    return [config("default", f"{DATA_DIR}/*") | {"default": True}] + [config(s.task_type, s.folder) for s in splits]


def dataset_info(splits: list[TaskSplit]) -> list[dict]:
    """Features, sizes and row counts per config, as `datasets` writes them (it checks the counts on
    load, and ignores a split without `num_bytes`)."""

    def info(name: str, parts: list[TaskSplit]) -> dict:
        num_bytes = sum(s.num_bytes for s in parts)
        return {
            "config_name": name,
            "features": [_feature(f) for f in PUBLISHED],  # fresh: no YAML aliases
            "splits": [{"name": SPLIT, "num_bytes": num_bytes, "num_examples": sum(s.rows for s in parts)}],
            "download_size": sum(s.download_size for s in parts),
            "dataset_size": num_bytes,
        }

    return [info("default", splits)] + [info(s.task_type, [s]) for s in splits]


def _feature(field: pa.Field) -> dict:
    """A column as `datasets` writes it in dataset_info (a list of structs: `list` of its fields)."""
    if pa.types.is_list(field.type) and pa.types.is_struct(field.type.value_type):
        return {"name": field.name, "list": [_feature(f) for f in field.type.value_type]}
    return {"name": field.name, "dtype": str(field.type)}


def chunk_filter_section(chunking: ChunkMetrics | None, run_id: str) -> str:
    """What the chunk stage of this run left out before generation: quality filters by reason,
    near-duplicates, chunks an earlier run had generated from."""
    if chunking is None:
        return ""
    rows = {f"quality filter: `{reason}`": count for reason, count in chunking.filtered.items()}
    rows |= {"shorter than chunk_min_chars": chunking.short_chunks,
             "exact or near duplicate (kept once, places in `also_in`)": chunking.duplicate_chunks,
             "of which near duplicates": chunking.near_duplicate_chunks,
             "already generated from by an earlier run": chunking.earlier_run_duplicates}
    table = _count_table("Chunks not sent to the model", rows, "Reason").replace("| Rows |", "| Chunks |")
    return (f"\n## Chunk filtering\n\nRun `{run_id}` kept {chunking.chunks} chunks of {chunking.documents} documents "
            f"for generation.\n{table}")


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    labels = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B"]
    labels += ["1B<n<10B", "10B<n<100B", "100B<n<1T"]
    return next((label for exponent, label in enumerate(labels, start=3) if n < 10**exponent), "n>1T")


def _quality_section(quality: QualitySummary | None, plots: Sequence[tuple[str, str]], run_id: str) -> str:
    """Validate's quality summary: pass rate, row counts, label distributions, why rows failed, plots."""
    if (quality is None or not quality.rows) and not plots:
        return ""
    lines, tables = [], []
    if quality is not None and quality.rows:
        lines += [
            f"- Pass rate: {quality.pass_rate:.1%} of the generated examples passed validation",
            f"- Rows: {quality.rows}",
            f"- Passed: {quality.passed}",
            f"- Quarantined: {quality.quarantined}",
            f"- Duplicate rate: {quality.duplicate_rate:.1%}",
            f"- Generations dropped before validation: {quality.dropped_generations}",
        ]
        for task, labels in quality.labels.items():
            tables.append(_count_table(f"Labels, {task}", labels, "Label"))
        if quality.failed_expectations:
            tables.append(_count_table("Failed expectations", quality.failed_expectations, "Reason"))
        if quality.parse_failures:
            tables.append(_count_table("Parse failures", quality.parse_failures, "Reason"))
    body = "\n".join(lines + tables + [f"![{_cell(label)}]({path})" for label, path in plots])
    return f"\n## Quality\n\nValidation of run `{run_id}` (Great Expectations):\n\n{body}\n"


def _model(model_id: str, revision: str) -> str:
    """A model as the card names it: a Hub id with its revision, or a local folder by its name and
    content hash (never its path on the machine that ran the pipeline)."""
    if looks_like_path(model_id):
        return f"`{PurePosixPath(model_id.rstrip('/')).name}` (a local model) with content hash `{revision}`"
    return f"`{model_id}` at revision `{revision}`"


def _license(config: RunConfig) -> str:
    if config.license != "other":
        return f"`{config.license}`"
    name = f"`{config.license_name}`" if config.license_name else "not named (`license_name` was not set)"
    if config.license_link:
        return f"Other: {name} ({config.license_link})."
    return (f"Other: {name}. No license text was given (`license_link` was not set when this dataset was "
            "published): ask its publisher under which terms it may be used.")


def _samples(examples: pa.Table, task_type: str) -> str:
    """The first SAMPLE_ROWS rows of one config as a Markdown table, text clipped."""
    rows = examples.filter(pc.equal(examples["task_type"], task_type)).sort_by("example_id").slice(0, SAMPLE_ROWS)
    lines = [f"| {_cell(_clip(i))} | {_cell(_clip(o))} |"
             for i, o in zip(rows.column("input").to_pylist(), rows.column("output").to_pylist())]
    return f"\n`{task_type}`:\n\n| input | output |\n|---|---|\n" + "\n".join(lines) + "\n"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1].rstrip() + "…"


def _count_table(name: str, counts: Mapping[str, int], header: str) -> str:
    rows = "\n".join(f"| {_cell(key)} | {count} |" for key, count in counts.items())
    return f"\n{name}:\n\n| {header} | Rows |\n|---|---|\n{rows}\n"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line, no raw HTML."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ")
