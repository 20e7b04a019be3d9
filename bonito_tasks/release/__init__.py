"""Releases: every publish is a release, compared with the last one and pinned by a tag.

The compare stage (bonito_tasks.compare, between validate and publish) builds tonight's scorecard from the
run's aggregates (scorecard.py), reads the scorecard of the last release published to the same
target (`read_baseline`: `.bonito/scorecard.json` of the Hub repo's main, or of the S3 export's
current snapshot; publish writes it there with every release), and runs the drift checks
(drift.py). Beyond a failure threshold the run fails with each failing check's expectation,
baseline value, tonight's value and threshold, unless the approval gate is on: then the approver
sees the comparison. A first release (no baseline) says so and passes.
Publish tags its Hub commit `tag_name(run)`; `bonito_dev.rollback`
restores a tag's tree in a new commit. docs/releases.md is the reference.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import SCORECARD_VERSION, CompareMetrics, Scorecard, sha256_hex
from bonito_tasks.store import safe_segment

log = logging.getLogger(__name__)

SCORECARD_FILE = "scorecard.json"
PLOT_FILE = "drift.svg"
DRIFT_FILE = "drift.json"  # every check, written also when the compare stage fails the run
REPORT_FILE = "report.html"  # the comparison for a person: the checks, then the plot
HIDDEN = ".bonito"  # publish/history.HIDDEN_DIR (the foundation imports no stage)
LATEST_SCORECARD = f"{HIDDEN}/scorecard.json"  # the last release's, in the published dataset
EXPORT_POINTER = "_latest.json"  # publish/export.POINTER


def tag_name(run_id: str) -> str:
    """The Hub tag of a run's release: `release-<run folder segment>` (a valid git ref name)."""
    return f"release-{safe_segment(run_id).replace('..', '_')}".removesuffix(".lock")


def release_scorecard_path(tag: str) -> str:
    """Where a release keeps its own scorecard in the dataset (next to the latest one)."""
    return f"{HIDDEN}/scorecards/{tag}.json"


@dataclass(frozen=True)
class Baseline:
    scorecard: Scorecard | None
    source: str | None  # where it was read (None: no target to read)
    note: str  # first release, unreadable, older version...
    raw_sha256: str = ""


def read_baseline(config: RunConfig, token: str | None, *, endpoint: str | None = None,
                  s3_client_kwargs: Mapping[str, Any] | None = None) -> Baseline:
    """The scorecard of the last release published to the run's target; never raises."""
    if config.hub_repo_id:
        source = f"hf://datasets/{config.hub_repo_id}@main/{LATEST_SCORECARD}"
        try:
            data = _hub_file(config.hub_repo_id, LATEST_SCORECARD, token, endpoint)
        except Exception as err:  # unreadable: said in the report, the checks not computed
            return Baseline(None, source, f"the baseline could not be read: {type(err).__name__}: "
                                          f"{_redact(str(err), token)[:300]}")
    elif config.export_s3_uri:
        from bonito_tasks.store import open_store

        source = f"{config.export_s3_uri.rstrip('/')}/<current snapshot>/{LATEST_SCORECARD}"
        try:  # the export's pointer names its current snapshot (publish/export.py, read_export)
            export = open_store(config.export_s3_uri, **dict(s3_client_kwargs or {}))
            pointer = json.loads(export.read_bytes(EXPORT_POINTER)) if export.exists(EXPORT_POINTER) else None
            key = f"{pointer['snapshot']}/{LATEST_SCORECARD}" if pointer else None
            data = export.read_bytes(key) if key and export.exists(key) else None
        except Exception as err:
            return Baseline(None, source, f"the baseline could not be read: {type(err).__name__}: {err}"[:400])
    else:
        return Baseline(None, None, "no Hub repo or export target: no earlier release to compare with")
    if data is None:
        return Baseline(None, source, "first release to this target: no baseline, nothing to compare")
    try:
        scorecard = Scorecard.model_validate(json.loads(data))
    except Exception as err:
        return Baseline(None, source, f"the baseline is not a scorecard: {type(err).__name__}: {err}"[:400])
    note = "" if scorecard.version == SCORECARD_VERSION else (
        f"the baseline is scorecard version {scorecard.version} (this code writes {SCORECARD_VERSION}): "
        "what both hold is compared")
    return Baseline(scorecard, source, note, sha256_hex(data))


def _hub_file(repo_id: str, path: str, token: str | None, endpoint: str | None) -> bytes | None:
    """A file of the dataset repo's main; None when the repo, the branch or the file does not exist."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from bonito_tasks.compat import hf_request_timeout

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token or None,
                library_name="bonito-etl")
    with hf_request_timeout(60), tempfile.TemporaryDirectory(prefix="bonito-baseline-") as cache:
        try:
            local = api.hf_hub_download(repo_id, path, repo_type="dataset", revision="main", cache_dir=cache)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        with open(local, "rb") as f:
            return f.read()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def scorecard_files(metrics: CompareMetrics | None) -> dict[str, bytes]:
    """The files a release adds to the dataset's `.bonito/`: the latest scorecard and its own copy."""
    if metrics is None:
        return {}
    data = metrics.scorecard.model_dump_json(indent=2).encode()
    return {LATEST_SCORECARD: data, release_scorecard_path(metrics.scorecard.release_tag): data}
