"""Release tags on the Hub and the rollback to one (bonito_dev.rollback, `make rollback`)."""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.errors import PermanentFailure

log = logging.getLogger(__name__)


class RollbackRefused(PermanentFailure):
    """A rollback that cannot be made as asked (no such tag, no write access): nothing was changed."""


def rows_added(examples: pa.Table) -> dict[str, int]:
    """Rows per task type of the rows a release added."""
    if examples.num_rows == 0:
        return {}
    return {c["values"]: c["counts"] for c in pc.value_counts(examples["task_type"]).to_pylist()}


def _api(token: str | None, endpoint: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token or None,
                 library_name="bonito-etl")


def tag_release(repo_id: str, commit_sha: str, tag: str, token: str | None, endpoint: str | None) -> str:
    """Tag the release's commit `tag`; a tag already there (a retry, a re-publish) is kept. Returns the tag."""
    from huggingface_hub.errors import HfHubHTTPError

    api = _api(token, endpoint)
    try:
        api.create_tag(repo_id, tag=tag, revision=commit_sha, repo_type="dataset",
                       tag_message=f"Bonito release {tag}")
    except HfHubHTTPError as err:
        if getattr(err.response, "status_code", None) != 409:
            raise
        log.info("tag %s already exists on %s", tag, repo_id)
    log.info("tagged %s of dataset repo %s as %s", commit_sha, repo_id, tag)
    return tag


def release_tags(repo_id: str, token: str | None, endpoint: str | None) -> dict[str, str]:
    """The repo's tags: name -> commit."""
    refs = _api(token, endpoint).list_repo_refs(repo_id, repo_type="dataset")
    return {t.name: t.target_commit for t in refs.tags}
