"""OpenLineage: one dag.test() run of the whole DAG with the provider's file transport (configured in
Airflow's config, as a deployment would point it at Marquez) emits a complete, valid set of events:
START and COMPLETE for every task, each stage's input and output datasets with OpenLineage's naming,
the contracts' schema, output statistics, and validate's Great Expectations results as
data-quality assertions. Each event is checked against the classes openlineage-python generates from
the OpenLineage JSON schema (required fields, types, enums, every facet's _schemaURL and _producer)."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import typing
import uuid
from datetime import datetime
from enum import Enum
from pathlib import Path

import pytest

from bonito_tasks.contracts import TABLES
from conftest import SAMPLE_DOCS, TINY_MODEL

pytestmark = [pytest.mark.airflow, pytest.mark.vllm]

RUNNER = Path(__file__).with_name("lineage_run.py")
STAGE_TASKS = {"plan", "extract", "collect_documents", "chunk", "plan_shards", "generate", "validate_shard",
               "validate", "publish"}


def _spec_classes() -> dict[str, type]:
    """openlineage-python's generated classes by the JSON schema location each one implements."""
    import attr
    import openlineage.client.generated as generated

    classes = {}
    for module in pkgutil.iter_modules(generated.__path__):
        mod = importlib.import_module(f"{generated.__name__}.{module.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and attr.has(obj) and "_get_schema" in vars(obj):
                classes[obj._get_schema()] = obj
    return classes


def check(value, hint, where: str, classes: dict[str, type]) -> None:
    """`value` (parsed JSON) conforms to the type `hint` of a generated class (recursively)."""
    import attr

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        return check(value, hint, where, classes)
    if origin is list:
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            check(item, args[0], f"{where}[{i}]", classes)
        return
    if origin is dict:
        assert isinstance(value, dict), where
        for key, item in value.items():
            check(item, args[1], f"{where}.{key}", classes)
        return
    if isinstance(hint, type) and issubclass(hint, Enum):
        assert value in {e.value for e in hint}, f"{where}: {value!r} not in {hint.__name__}"
        return
    if isinstance(hint, type) and attr.has(hint):
        assert isinstance(value, dict), where
        cls = hint
        if "_schemaURL" in value:  # a facet: the concrete class its schema location names
            assert value["_schemaURL"].startswith("https://openlineage.io/spec/"), where
            assert isinstance(value.get("_producer"), str) and value["_producer"], f"{where}: _producer"
            cls = classes.get(value["_schemaURL"], hint)
        hints = typing.get_type_hints(cls)
        for field in attr.fields(cls):
            key = field.name if field.name.startswith("_") else field.alias
            key = field.name if key not in value and field.name in value else key
            if key not in value:
                assert field.default is not attr.NOTHING, f"{where}: required field {key!r} missing"
                continue
            check(value[key], hints[field.name], f"{where}.{key}", classes)
        return
    if hint is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), where
        return
    if isinstance(hint, type):
        assert isinstance(value, hint), f"{where}: {value!r} is not {hint.__name__}"


def validate_event(event: dict, classes: dict[str, type]) -> None:
    from openlineage.client.event_v2 import RunEvent

    assert event["schemaURL"].startswith("https://openlineage.io/spec/2-0-2/OpenLineage.json"), event["schemaURL"]
    datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))
    uuid.UUID(event["run"]["runId"])
    check(event, RunEvent, "event", classes)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    out = tmp_path_factory.mktemp("lineage")
    conf = {"source": str(SAMPLE_DOCS), "store": str(out / "store"), "model_id": str(TINY_MODEL), "dtype": "float32",
            "task_types": ["exqa", "ynqa"], "chunk_shard_size": 50, "min_pass_rate": 0.0, "max_duplicate_rate": 1.0,
            "max_label_share": 1.0}
    # A module fixture runs before the function-scoped allow_any_location: allow this run's store here.
    env = {**os.environ, "BONITO_ALLOWED_STORES": conf["store"]}
    done = subprocess.run([sys.executable, str(RUNNER), str(out), json.dumps(conf)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-5000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("LINEAGE_RUN ")]
    run = json.loads(line.removeprefix("LINEAGE_RUN "))
    assert run["state"] == "success", (done.stdout + done.stderr)[-5000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return run, events, out


def test_every_event_is_valid_against_the_spec_classes(lineage):
    _, events, _ = lineage
    classes = _spec_classes()
    for event in events:
        validate_event(event, classes)


def test_every_task_starts_and_completes(lineage):
    _, events, _ = lineage
    states: dict[str, list[str]] = {}
    for event in events:
        states.setdefault(event["job"]["name"], []).append(event["eventType"])
    assert "COMPLETE" in states.pop("bonito_dataset")  # the DAG run's own event (dag.test sends no START)
    states = {job.removeprefix("bonito_dataset."): types for job, types in states.items()}
    assert STAGE_TASKS <= set(states), states
    for task, types in states.items():
        assert types.count("START") == types.count("COMPLETE") >= 1, (task, types)
    assert {e["job"]["namespace"] for e in events} == {"bonito-e2e"}


def _completes(events, task):
    return [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"bonito_dataset.{task}"]


def test_stages_emit_datasets_with_schema_statistics_and_assertions(lineage):
    _, events, out = lineage
    store = str((out / "store").resolve())
    (extract,) = _completes(events, "collect_documents")
    (documents,) = [d for d in extract["outputs"]
                    if "/extract/" in d["name"] and d["name"].endswith(".documents.parquet")]
    assert documents["namespace"] == "file" and documents["name"].startswith(store)
    assert [f["name"] for f in documents["facets"]["schema"]["fields"]] == TABLES["documents"].names
    stats = documents["outputFacets"]["outputStatistics"]
    assert stats["rowCount"] > 0 and stats["size"] > 0 and stats["fileCount"] >= 1
    assert documents["facets"]["symlinks"]["identifiers"][0]["name"] == "bonito_dataset/documents"

    plan = _completes(events, "plan")[0]
    assert {(d["namespace"], d["name"]) for d in plan["inputs"]} >= {("file", str(SAMPLE_DOCS))}

    (validate,) = _completes(events, "validate")
    assert {d["name"].rsplit(".", 2)[-2] for d in validate["outputs"]} >= {"examples"}
    checked = [d for d in validate["inputs"] if d["name"].endswith(".examples.parquet")]
    assert checked and all("dataQualityAssertions" in d["inputFacets"] for d in checked)
    assertions = {a["name"]: a for a in checked[0]["inputFacets"]["dataQualityAssertions"]["assertions"]}
    assert assertions["min_pass_rate"]["severity"] == "error" and "min_value" in assertions["min_pass_rate"]["expected"]
    assert assertions["min_pass_rate"]["success"] is True and assertions["min_pass_rate"]["actual"] is not None

    (publish,) = _completes(events, "publish")
    assert any(d["name"].endswith("/publish/dataset") for d in publish["outputs"])
    assert {stage for d in publish["inputs"] for stage in ("validate", "extract") if f"/{stage}/" in d["name"]} == {
        "validate", "extract"}
    for task in ("chunk", "generate"):
        for event in _completes(events, task):
            assert event["inputs"] and event["outputs"], task


def test_facets_match_the_data(lineage):
    """Names are what is on disk, assertions name schema columns, every output has statistics."""
    _, events, out = lineage
    for event in (e for e in events if e["eventType"] == "COMPLETE"):
        for dataset in event.get("inputs", []) + event.get("outputs", []):
            if dataset["namespace"] == "file":
                assert list(Path("/").glob(dataset["name"].lstrip("/"))), (event["job"]["name"], dataset["name"])
            assertions = (dataset.get("inputFacets") or {}).get("dataQualityAssertions")
            if assertions:
                columns = {f["name"] for f in dataset["facets"]["schema"]["fields"]}
                named = {a["column"] for a in assertions["assertions"] if a.get("column")}
                assert named and named <= columns, named - columns
        for dataset in event.get("outputs", []):
            assert "outputStatistics" in (dataset.get("outputFacets") or {}), dataset["name"]
    (publish,) = _completes(events, "publish")
    published = [d for d in publish["outputs"] if d["name"].endswith("/publish/dataset")]
    assert published and "schema" in published[0]["facets"]
    assert published[0]["outputFacets"]["outputStatistics"]["rowCount"] > 0
