"""Where a run may read and write is the deployment's decision (bonito_tasks.access,
plugins/bonito_airflow/access.py), and no run id reaches another run's folder (store.run_segment)."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import pytest

from bonito_tasks.access import AllowedLocations, LocationRefused, within
from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import RunRef
from bonito_tasks.store import LocalStore, run_prefix, run_segment


@pytest.mark.parametrize(("uri", "prefix", "inside"), [
    ("/data/store", "/data/store", True),
    ("/data/store/", "/data/store", True),
    ("/data/store/a/b", "/data/store/", True),
    ("/data/store-evil", "/data/store", False),
    ("/data/storeroom/x", "/data/store", False),
    ("/data/store/../secret", "/data/store", False),
    ("/data/store/a/../../secret", "/data/store", False),
    ("/data/store/./a", "/data/store", True),
    ("file:///data/store/a", "/data/store", True),
    ("/data", "/data/store", False),
    ("s3://bucket/docs/a.pdf", "s3://bucket", True),
    ("s3://bucket", "s3://bucket/", True),
    ("s3://bucket-evil/x", "s3://bucket", False),
    ("s3://bucketx", "s3://bucket", False),
    ("s3://bucket/docs-evil/x", "s3://bucket/docs", False),
    ("s3://bucket/docs/x", "s3://bucket/docs/", True),
    ("s3://other/docs/x", "s3://bucket/docs", False),
    ("/bucket/docs", "s3://bucket/docs", False),  # a local path is not the bucket
])
def test_prefixes_match_path_by_path(uri, prefix, inside):
    assert within(uri, prefix) is inside


@pytest.mark.parametrize("uri", ["s3://bucket/docs/../secret", "s3://bucket/./docs", "s3:///docs", "/data/a\nb", ""])
def test_a_location_that_cannot_be_compared_safely_is_refused(uri):
    allowed = AllowedLocations(sources=("s3://bucket", "/data"), stores=("/store",))
    with pytest.raises(LocationRefused, match="source="):
        allowed.check(RunConfig.model_construct(source=uri, store="/store", export_s3_uri=None))


def test_a_link_out_of_the_prefix_is_outside(tmp_path):
    allowed, secret = tmp_path / "docs", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "escape").symlink_to(secret)
    assert within(str(allowed / "sub"), str(allowed))
    assert not within(str(allowed / "escape"), str(allowed))
    assert not within(str(allowed / "escape" / "x.txt"), str(allowed))


def _config(**values):
    return RunConfig(**({"source": "/data/docs", "store": "/data/store"} | values))


ALLOWED = AllowedLocations(sources=("/data/docs", "s3://documents/team-a"), stores=("/data/store", "s3://bonito-store"),
                           exports=("s3://exports/team-a",),
                           origin={"sources": "BONITO_ALLOWED_SOURCES", "stores": "BONITO_ALLOWED_STORES",
                                   "exports": "BONITO_ALLOWED_EXPORTS"})


def test_within_the_allowed_locations_is_accepted():
    for config in (_config(), _config(source="s3://documents/team-a/2026/", store="s3://bonito-store/"),
                   _config(source="/data/docs/a.pdf", store="/data/store/team-a",
                           export_s3_uri="s3://exports/team-a/nightly")):
        ALLOWED.check(config, "bonito_dataset")


def test_each_refusal_names_the_setting_the_value_and_the_allowed_prefixes():
    config = _config(source="/etc", store="/another/team/folder", export_s3_uri="s3://exports/team-b")
    with pytest.raises(LocationRefused) as refused:
        ALLOWED.check(config, "bonito_dataset")
    message = str(refused.value)
    assert "source='/etc' is not under an allowed source location (allowed: /data/docs, s3://documents/team-a; " \
           "set by BONITO_ALLOWED_SOURCES)" in message
    assert "store='/another/team/folder' is not under an allowed store location (allowed: /data/store, " \
           "s3://bonito-store; set by BONITO_ALLOWED_STORES)" in message
    assert "export_s3_uri='s3://exports/team-b' is not under an allowed export location (allowed: " \
           "s3://exports/team-a; set by BONITO_ALLOWED_EXPORTS)" in message
    assert "nothing was read or written" in message


def test_a_store_inside_a_dag_folder_of_an_allowed_store_is_refused():
    with pytest.raises(LocationRefused, match="lies inside a 'bonito_dataset' folder"):
        ALLOWED.check(_config(store="/data/store/bonito_dataset/manual__x"), "bonito_dataset")
    with pytest.raises(LocationRefused, match="lies inside a 'bonito_dataset' folder"):
        ALLOWED.check(_config(store="s3://bonito-store/bonito_dataset"), "bonito_dataset")


def test_an_empty_list_allows_nothing_and_star_allows_anything():
    with pytest.raises(LocationRefused, match=r"export_s3_uri='s3://x/y' .*\(allowed: none;"):
        AllowedLocations(sources=("*",), stores=("*",)).check(_config(export_s3_uri="s3://x/y"))
    AllowedLocations(sources=("*",), stores=("*",), exports=("*",)).check(_config(export_s3_uri="s3://x/y"))


# --- the deployment's settings (plugins) -----------------------------------------------------------

def test_defaults_are_the_deployment_store_its_source_the_samples_and_the_scheduled_settings():
    from bonito_airflow.access import env_locations
    from bonito_tasks.access import DEMO_SOURCES

    env = {"BONITO_SOURCE": "s3://documents/", "BONITO_STORE": "s3://bonito-store",
           "BONITO_SCHEDULE_CONFIG": json.dumps({"export_s3_uri": "s3://exports/nightly"})}
    allowed = env_locations(env)
    assert allowed.sources == ("s3://documents/", *DEMO_SOURCES)
    assert allowed.stores == ("s3://bonito-store",) and allowed.exports == ("s3://exports/nightly",)
    assert env_locations({"AIRFLOW_HOME": "/opt/airflow"}).stores == ("/opt/airflow/bonito-store",)
    given = env_locations(env | {"BONITO_ALLOWED_STORES": " s3://a , s3://b/x,", "BONITO_ALLOWED_EXPORTS": ""})
    assert given.stores == ("s3://a", "s3://b/x") and given.exports == ("s3://exports/nightly",)
    assert given.origin["stores"] == "BONITO_ALLOWED_STORES"


def test_the_variable_replaces_the_lists_it_names():
    from bonito_airflow.access import parse_variable
    from bonito_tasks.config import ConfigRejected

    base = AllowedLocations(sources=("/a",), stores=("/s",), exports=())
    over = parse_variable(json.dumps({"exports": ["s3://exports/x"]}), base)
    assert over.sources == ("/a",) and over.exports == ("s3://exports/x",)
    assert over.origin["exports"] == "Variable bonito_allowed_locations"
    for bad, message in (("{", "not valid JSON"), ('{"store": []}', "keys among sources, stores, exports"),
                         ('{"stores": "/x"}', "stores must be a list of URIs")):
        with pytest.raises(ConfigRejected, match=message):
            parse_variable(bad, base)


def _context(tmp_path, run_id="manual__2026-01-01T00:00:00+00:00", **params):
    from unittest import mock

    from airflow.sdk.execution_time.context import OutletEventAccessors

    values = {"source": str(tmp_path / "docs"), "store": str(tmp_path / "store")} | params
    return {"params": values, "dag_run": SimpleNamespace(dag_id="bonito_dataset", run_id=run_id, run_type="manual"),
            "ti": mock.Mock(), "outlet_events": OutletEventAccessors()}


@pytest.mark.airflow
def test_check_params_and_every_later_task_refuse_a_foreign_store_without_retries(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_airflow.operators import BonitoCheckParamsOperator, BonitoPlanOperator

    monkeypatch.setenv("BONITO_ALLOWED_SOURCES", str(tmp_path / "docs"))
    monkeypatch.setenv("BONITO_ALLOWED_STORES", str(tmp_path / "store"))
    foreign = tmp_path / "another" / "team"
    context = _context(tmp_path, store=str(foreign))
    for task in (BonitoCheckParamsOperator(task_id="check_params"), BonitoPlanOperator(task_id="plan")):
        with pytest.raises(AirflowFailException, match=re.escape(f"store={str(foreign)!r} is not under")):
            task.execute(context)
    assert not foreign.exists()  # nothing written there
    BonitoCheckParamsOperator(task_id="check_params").execute(_context(tmp_path))  # inside: accepted
    # An admin's Variable widens (or narrows) the lists.
    monkeypatch.setenv("AIRFLOW_VAR_BONITO_ALLOWED_LOCATIONS", json.dumps({"stores": [str(tmp_path / "another")]}))
    BonitoCheckParamsOperator(task_id="check_params").execute(context)


@pytest.mark.airflow
def test_approve_rechecks_the_locations(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_airflow.approval import BonitoApprovalOperator

    monkeypatch.setenv("BONITO_ALLOWED_SOURCES", str(tmp_path / "docs"))
    monkeypatch.setenv("BONITO_ALLOWED_STORES", str(tmp_path / "store"))
    with pytest.raises(AirflowFailException, match="source='/etc' is not under"):
        BonitoApprovalOperator(task_id="approve", examples={}).execute(_context(tmp_path, source="/etc"))


# --- run folders -----------------------------------------------------------------------------------

TRICKY_IDS = [
    ".", "..", "", "/", "./", "../x", "%2e", "%2e%2e", "_ledger", "_neardup", "_figures", "a:b", "a_b", "a+b", "a b",
    "a/b", "a\\b", "~", "a~b", "-x", ".hidden", "A", "a", "x" * 250,
    "manual__2026-11-28T19:28:29.682375+00:00", "manual__2026-11-28T19_28_29.682375_00_00",
    "manual__2026-11-28T19+28+29.682375:00:00", "manual__2026-11-28T19:28:29.682375+00:00_abcd1234",
    "manual__2026-11-28T19_28_29.682375_00_00_abcd1234", "scheduled__2026-01-01T02:00:00+00:00", "probe_run_1",
]


def test_every_run_id_gets_a_folder_of_its_own_inside_the_dag_folder():
    segments = [run_segment(run_id) for run_id in TRICKY_IDS]
    assert len(set(segments)) == len(TRICKY_IDS)  # no two run ids share a folder
    for run_id, segment in zip(TRICKY_IDS, segments, strict=True):
        assert re.fullmatch(r"[A-Za-z0-9._~-]{1,240}", segment), (run_id, segment)
        assert segment not in (".", "..") and not segment.startswith("_l") and segment[0] not in ".-"
        assert segment not in ("_ledger", "_neardup", "_figures")
        assert os.path.normpath(f"bonito_dataset/{segment}") == f"bonito_dataset/{segment}"


def test_airflow_and_plain_run_ids_keep_their_folders():
    assert run_segment("manual__2026-11-28T19:28:29.682375+00:00") == "manual__2026-11-28T19_28_29.682375_00_00"
    assert run_segment("scheduled__2026-01-01T02:00:00+00:00") == "scheduled__2026-01-01T02_00_00_00_00"
    assert run_segment("probe_run_1") == "probe_run_1"
    assert run_segment(".").endswith(tuple("0123456789abcdef")) and "~" in run_segment("..")


def test_no_run_id_reaches_another_runs_folder(tmp_path):
    """Every tricky id's folder, with any file path the view serves under it, stays in that folder
    and out of every other id's."""
    store = LocalStore(tmp_path)
    folders = {run_id: (store.root / run_prefix(RunRef(dag_id="bonito_dataset", run_id=run_id))).resolve()
               for run_id in TRICKY_IDS}
    dag_folder = (store.root / "bonito_dataset").resolve()
    for run_id, folder in folders.items():
        assert folder.parent == dag_folder, run_id
        for other_id, other in folders.items():
            if other_id != run_id:
                assert other != folder and folder not in other.parents, (run_id, other_id)


def test_make_demo_and_make_run_allow_their_own_locations(tmp_path):
    from bonito_airflow.access import env_locations
    from bonito_dev.demo import demo_conf
    from bonito_dev.local import allow_own_locations

    env = {"BONITO_ALLOWED_STORES": "s3://team", "BONITO_ALLOWED_SOURCES": "s3://docs"}
    conf = demo_conf(tmp_path)
    with pytest.raises(LocationRefused):
        env_locations(env).check(RunConfig(**conf), "bonito_dataset")
    allow_own_locations(conf, env)
    env_locations(env).check(RunConfig(**conf), "bonito_dataset")
    assert env["BONITO_ALLOWED_STORES"] == f"s3://team,{tmp_path / 'store'}"
    run_conf = {"source": "s3://bucket/docs", "store": str(tmp_path / "local"), "export_s3_uri": "s3://exports/x"}
    allow_own_locations(run_conf, env)
    env_locations(env).check(RunConfig(**run_conf), "bonito_dataset")
