"""OpenLineage facets of the stage operators (apache-airflow-providers-openlineage calls
`get_openlineage_facets_on_complete` / `_on_failure` on each operator after it ran).

Every stage reports:
- its **inputs**: the tables of the manifests it read (the stage's XCom references), and for extract
  the source folder or `s3://` prefix;
- its **outputs**: each table it committed, with a schema facet from `bonito_tasks.contracts`, output
  statistics (rows, bytes, files) and a symlink to the stable logical name `bonito_dataset/<table>`;
  publish adds the dataset folder, `hf://datasets/<repo>` and the `s3://` export;
- validate: the Great Expectations results as a data-quality-assertions facet on the generated
  examples it checked (also when validate failed: the failed thresholds with observed values).

Dataset names follow OpenLineage's naming: a local store is namespace `file` with the absolute path,
S3 is `s3://<bucket>` with the key; a table of a run is `<run folder>/<stage>/<table>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from bonito_tasks.contracts import TABLES, ExpectationOutcome, Manifest, StageFailure

log = logging.getLogger(__name__)

HUB_NAMESPACE = "hf://datasets"
LOGICAL_NAMESPACE = "bonito"


def _naming(uri: str):
    """(namespace, name) of a store or source URI, by OpenLineage's naming rules."""
    from openlineage.client.naming.dataset import S3, LocalFileSystem

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


def table_datasets(manifest: Manifest, output: bool, extra: dict[str, Any] | None = None) -> list:
    """One dataset per table of a committed stage (or partition)."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    folder = manifest.uri.rsplit("/", 1)[0]
    datasets = []
    for table in sorted(manifest.counts):
        parts = manifest.shards_of(table)
        namespace, name = _naming(f"{folder}/{table}")
        facets = {"schema": _schema_facet(table), "symlinks": _symlink(manifest.dag_id, table)} if (
            table in TABLES) else {}
        if output:
            sizes = [p.bytes for p in parts]
            datasets.append(OutputDataset(namespace=namespace, name=name, facets=facets | (extra or {}),
                                          outputFacets={"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
                                              rowCount=manifest.counts[table], fileCount=len(parts),
                                              size=sum(sizes) if None not in sizes else None)}))
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
        dq.Assertion(assertion=e.expectation, success=e.success, column=column(e), name=e.name,
                     severity="warn" if e.level == "row" else "error", description=e.expected,
                     expected=json.dumps(e.bound, sort_keys=True, default=str) if e.bound else None,
                     actual=actual(e), contentType="json", params={"level": e.level})
        for e in expectations])


def _with_assertions(inputs: list, expectations: list[ExpectationOutcome]) -> list:
    """Validate's inputs, the generated examples carrying the assertions made on them."""
    if not expectations:
        return inputs
    facet = assertions(expectations)
    return [d if not d.name.endswith("/examples") else type(d)(
        namespace=d.namespace, name=d.name, facets=d.facets,
        inputFacets={**(d.inputFacets or {}), "dataQualityAssertions": facet}) for d in inputs]


def stage_lineage(operator, task_instance=None):
    """OperatorLineage of a stage that committed (`operator.lineage_run` holds its runtime and manifest)."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    rt, manifest = getattr(operator, "lineage_run", (None, None))
    if manifest is None:
        return OperatorLineage()
    inputs = [d for m in _input_manifests(operator, rt.store) for d in table_datasets(m, output=False)]
    if manifest.stage in ("extract", "plan") or not inputs:
        inputs.append(InputDataset(*_naming(rt.config.source)))
    outputs = table_datasets(manifest, output=True)
    metrics = manifest.metrics
    if manifest.stage == "validate":
        inputs = _with_assertions(inputs, list(getattr(metrics, "expectations", [])))
    if manifest.stage == "publish":
        extra = {"symlinks": _symlink(manifest.dag_id, "dataset")}
        outputs.append(OutputDataset(*_naming(metrics.dataset_uri), facets=extra))
        if rt.config.hub_repo_id:
            outputs.append(OutputDataset(namespace=HUB_NAMESPACE, name=rt.config.hub_repo_id, facets=extra))
        if metrics.export_uri:
            outputs.append(OutputDataset(*_naming(metrics.export_uri), facets=extra))
    return OperatorLineage(inputs=inputs, outputs=outputs)


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
