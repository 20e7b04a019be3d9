"""OpenLineage facets of the stage operators (apache-airflow-providers-openlineage calls
`get_openlineage_facets_on_complete` / `_on_failure` on each operator after it ran).

Every stage reports:
- its **inputs**: the tables of the manifests it read (the stage's XCom references), and for extract
  the source folder or `s3://` prefix;
- its **outputs**: each table it committed, with a schema facet from `bonito_tasks.contracts`, output
  statistics (rows, bytes, files) and a symlink to the stable logical name `bonito_dataset/<table>`;
  publish adds the dataset folder, the Hub dataset and the `s3://` export, each with the published
  rows' schema and statistics;
- validate: the Great Expectations results as a data-quality-assertions facet on the generated
  examples it checked (also when validate failed: the failed thresholds with observed values). A
  check runs on a column the validate stage computes from the examples (`output_tokens` from
  `output`); the assertion names that examples column (the computed one is in its params), so every
  column an assertion names is in the dataset's schema facet.

Dataset names are what is on disk or on the Hub, by OpenLineage's naming: a local store is namespace
`file` with the absolute path, S3 is `s3://<bucket>` with the key. A table of a run is its Parquet
file, `<run folder>/<stage>/part-00000.<table>.parquet`, or the pattern of its parts
(`<run folder>/generate/shard-*/part-*.examples.parquet`); a table without rows has no file and no
dataset. The Hub dataset is namespace `https://huggingface.co` ($HF_ENDPOINT where set) with name
`datasets/<repo_id>`, its URL.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from bonito_tasks.contracts import TABLES, CompareMetrics, ExpectationOutcome, Manifest, StageFailure

log = logging.getLogger(__name__)

LOGICAL_NAMESPACE = "bonito"
# The examples column each column of validate's row profile is computed from (None: several columns,
# or the whole table); `<column>__present`, `label__<task>` and `label_tokens__<task>` by their names.
PROFILE_SOURCES: dict[str, str | None] = {
    "task_type": "task_type", "input_tokens": "input", "output_tokens": "output", "input_has_markup": "input",
    "output_has_markup": "output", "copies_context": "input", "answer_in_context": "output",
    "answer_in_options": "output", "chunk_found": "chunk_id", "repeats_input_output": None,
    # the dataset suite's summary: one row of numbers over the whole table
    "passed": None, "passed_rows": None, "repeat": None,
}


def hub_dataset_naming(repo_id: str) -> tuple[str, str]:
    """(namespace, name) of a Hub dataset: the Hub's URL and `datasets/<repo_id>` (together its page)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"), f"datasets/{repo_id}"


def examples_column(profile_column: str | None) -> str | None:
    """The examples column a check's profile column is computed from (None: several, or none)."""
    if profile_column is None:
        return None
    if profile_column.endswith("__present"):
        return profile_column.removesuffix("__present")
    if profile_column.startswith(("label__", "label_tokens__")):
        return "output"
    if profile_column.startswith("label_share__"):
        return None
    return PROFILE_SOURCES[profile_column]


def _naming(uri: str):
    """(namespace, name) of a store or source URI, by OpenLineage's naming rules."""
    from openlineage.client.naming.dataset import S3, LocalFileSystem

    naming: S3 | LocalFileSystem
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        naming = S3(bucket_name=bucket, object_key=key.strip("/") or "/")
    else:
        naming = LocalFileSystem(path=uri.removeprefix("file://").rstrip("/") or "/")
    return naming.get_namespace(), naming.get_name()


def _schema_facet(table: str):
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type),
                                                description=None if f.nullable else "not null")
        for f in TABLES[table]])


def _symlink(dag_id: str, table: str):
    from openlineage.client.facet_v2 import symlinks_dataset

    return symlinks_dataset.SymlinksDatasetFacet(identifiers=[symlinks_dataset.Identifier(
        namespace=LOGICAL_NAMESPACE, name=f"{dag_id}/{table}", type="TABLE")])


def table_name(folder: str, table: str, paths: list[str]) -> str | None:
    """A table's dataset name: its one file, or the pattern its parts share (shard and part numbers
    as `*`); None for a table with no file."""
    if not paths:
        return None
    if len(paths) == 1:
        return f"{folder}/{paths[0]}"
    patterns = {re.sub(r"(?<=shard-)\d+|(?<=part-)\d+", "*", path) for path in paths}
    return f"{folder}/{patterns.pop()}" if len(patterns) == 1 else f"{folder}/**/*.{table}.parquet"


def table_datasets(manifest: Manifest, output: bool, extra: dict[str, Any] | None = None) -> list:
    """One dataset per table of a committed stage (or partition) that has a file."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    folder = manifest.uri.rsplit("/", 1)[0]
    datasets: list[InputDataset | OutputDataset] = []
    for table in sorted(manifest.counts):
        parts = manifest.shards_of(table)
        if (path := table_name(folder, table, [p.path for p in parts])) is None:
            continue
        namespace, name = _naming(path)
        facets = {"schema": _schema_facet(table), "symlinks": _symlink(manifest.dag_id, table)} if (
            table in TABLES) else {}
        if output:
            sizes = [p.bytes for p in parts if p.bytes is not None]  # None: written before sizes were recorded
            datasets.append(OutputDataset(namespace=namespace, name=name, facets=facets | (extra or {}),
                                          outputFacets={"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
                                              rowCount=manifest.counts[table], fileCount=len(parts),
                                              size=sum(sizes) if len(sizes) == len(parts) else None)}))
        else:
            datasets.append(InputDataset(namespace=namespace, name=name, facets=facets))
    return datasets


def input_refs(operator) -> list[str]:
    """The manifest URIs among the operator's rendered template fields (the stage's inputs). Called by
    the operator while it runs: a mapped task's output is a lazy XCom sequence, read through the task
    supervisor, which the provider's emitting thread must not do."""
    uris: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("manifest"), str):
                uris.append(value["manifest"])
        elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
            for item in value:
                collect(item)

    for field in operator.template_fields:
        collect(getattr(operator, field, None))
    return list(dict.fromkeys(uris))


def _input_manifests(operator, store) -> list[Manifest]:
    manifests = []
    for uri in getattr(operator, "lineage_inputs", []):
        try:
            manifests.append(store.read_manifest(uri))
        except Exception as err:  # lineage must never fail the task
            log.warning("OpenLineage: could not read input manifest %s: %s", uri, err)
    return manifests


def assertions(expectations: list[ExpectationOutcome]):
    """GX expectation outcomes as OpenLineage assertions (row checks quarantine: severity warn)."""
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dq

    def column(e: ExpectationOutcome) -> str | None:
        return e.column if isinstance(e.column, str) else None

    def actual(e: ExpectationOutcome) -> str | None:
        if e.unexpected_count is not None:
            return f"{e.unexpected_count} unexpected rows"
        return None if e.observed_value is None else json.dumps(e.observed_value, default=str)

    return dq.DataQualityAssertionsDatasetFacet(assertions=[
        dq.Assertion(assertion=e.expectation, success=e.success, column=examples_column(column(e)), name=e.name,
                     severity="warn" if e.level == "row" else "error", description=e.expected,
                     expected=json.dumps(e.bound, sort_keys=True, default=str) if e.bound else None,
                     actual=actual(e), contentType="json",
                     params={"level": e.level} | ({"profile_column": column(e)} if column(e) else {}))
        for e in expectations])


def _with_assertions(inputs: list, expectations: list[ExpectationOutcome]) -> list:
    """Validate's inputs, the generated examples carrying the assertions made on them."""
    if not expectations:
        return inputs
    facet = assertions(expectations)
    return [d if not d.name.endswith(".examples.parquet") else type(d)(
        namespace=d.namespace, name=d.name, facets=d.facets,
        inputFacets={**(d.inputFacets or {}), "dataQualityAssertions": facet}) for d in inputs]


def stage_lineage(operator, task_instance=None):
    """OperatorLineage of a stage that committed (`operator.lineage_run` holds its runtime and manifest)."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset

    rt, manifest = getattr(operator, "lineage_run", (None, None))
    if manifest is None:
        return OperatorLineage()
    assert rt is not None  # lineage_run is set as (runtime, manifest)
    inputs = [d for m in _input_manifests(operator, rt.store) for d in table_datasets(m, output=False)]
    if manifest.stage in ("extract", "plan") or not inputs:
        inputs.append(InputDataset(*_naming(rt.config.source)))
    outputs = table_datasets(manifest, output=True)
    metrics = manifest.metrics
    if manifest.stage == "validate":
        inputs = _with_assertions(inputs, list(getattr(metrics, "expectations", [])))
    if manifest.stage == "publish":
        outputs += published_datasets(manifest.dag_id, metrics, rt.config.hub_repo_id)
    if isinstance(metrics, CompareMetrics):  # the run event carries the scorecard and the drift verdict (#24)
        facets = {"bonito_scorecard": scorecard_facet(metrics)}
        return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=facets)
    return OperatorLineage(inputs=inputs, outputs=outputs)


@functools.cache
def _scorecard_facet_type():
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class BonitoScorecardRunFacet(RunFacet):
        """Tonight's scorecard (bonito_tasks.contracts.Scorecard) and its drift against the last release."""

        scorecard: dict
        verdict: str
        baseline_run: str | None = None
        baseline_tag: str | None = None
        failures: int = 0
        warnings: int = 0
        checks: list = attr.field(factory=list)

    return BonitoScorecardRunFacet


def scorecard_facet(metrics: CompareMetrics):
    """The compare stage's run facet: the scorecard, the verdict and the checks that are not ok."""
    return _scorecard_facet_type()(
        scorecard=metrics.scorecard.model_dump(mode="json"), verdict=metrics.verdict, baseline_run=metrics.baseline_run,
        baseline_tag=metrics.baseline_tag, failures=metrics.failures, warnings=metrics.warnings,
        checks=[c.model_dump(mode="json") for c in metrics.checks if c.severity != "ok"])


def published_datasets(dag_id: str, metrics, hub_repo_id: str | None) -> list:
    """The published dataset where it went (the store's folder, the Hub, the S3 export), each with
    the published rows' schema and the statistics of what the dataset holds."""
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import OutputDatasetFacet, schema_dataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    from bonito_tasks.publish.layout import PUBLISHED

    facets = {"symlinks": _symlink(dag_id, "dataset"), "schema": schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in PUBLISHED])}
    statistics: dict[str, OutputDatasetFacet] = {"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
        rowCount=metrics.examples, size=sum(f.bytes for f in metrics.files.values()) or None,
        fileCount=len(metrics.files) or None)}
    places = [_naming(metrics.dataset_uri)]
    if hub_repo_id:
        places.append(hub_dataset_naming(hub_repo_id))
    if metrics.export_uri:
        places.append(_naming(metrics.export_uri))
    return [OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=statistics)
            for namespace, name in places]


def failed_stage_lineage(operator, task_instance=None):
    """OperatorLineage of a stage that failed: its inputs, and for validate the failed thresholds
    (from the stage's failure record) as assertions on the examples it checked."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from bonito_tasks.failures import stage_failures

    rt = getattr(operator, "runtime", None)
    if rt is None:
        return OperatorLineage()
    inputs = [d for m in _input_manifests(operator, rt.store) for d in table_datasets(m, output=False)]
    stage = getattr(operator, "stage_name", None) or operator.task_id
    failures: list[StageFailure] = stage_failures(rt.store, rt.run, stage) if stage == "validate" else []
    failed = [ExpectationOutcome(**{k: v for k, v in e.items() if k in ExpectationOutcome.model_fields})
              for f in failures for e in f.details.failed if "expectation" in e]
    return OperatorLineage(inputs=_with_assertions(inputs, failed))
