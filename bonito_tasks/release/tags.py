"""Release tags on the Hub and the rollback to one (bonito_dev.rollback, `make rollback`)."""

from __future__ import annotations

import logging
import os

from bonito_tasks.errors import PermanentFailure

log = logging.getLogger(__name__)


class RollbackRefused(PermanentFailure):
    """A rollback that cannot be made as asked (no such tag, no write access): nothing was changed."""


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


ROLLBACK_TITLE = "Roll back to "  # the title of a rollback's commit, then the tag it restores


def releases_undone(repo_id: str, tag: str, token: str | None, endpoint: str | None) -> tuple[list[str], list[str]]:
    """What restoring release `tag` on main undoes, from main's history and the release tags:
    (removed, returned) release tags. A release commit adds its tag to what main holds, a rollback
    commit resets it to what the tag it restored held. `removed`: held by main before the rollback,
    not by `tag`; `returned`: held by `tag` again (an earlier rollback undone). Rollback commits to
    `tag` at the head (this rollback, or a retry of it) are looked through."""
    tags = release_tags(repo_id, token, endpoint)
    released: dict[str, list[str]] = {}  # commit -> its release tags
    for name, commit in tags.items():
        if name.startswith("release-"):
            released.setdefault(commit, []).append(name)
    history = _api(token, endpoint).list_repo_commits(repo_id, repo_type="dataset", revision="main")  # newest first
    held_at: dict[str, tuple[str, ...]] = {}
    held: tuple[str, ...] = ()
    for commit in reversed(history):
        restored = tags.get(commit.title.removeprefix(ROLLBACK_TITLE)) if commit.title.startswith(ROLLBACK_TITLE) \
            else None
        if restored in held_at:
            held = held_at[restored]
        else:
            held += tuple(t for t in sorted(released.get(commit.commit_id, ())) if t not in held)
        held_at[commit.commit_id] = held
    before = next((held_at[c.commit_id] for c in history if c.title != f"{ROLLBACK_TITLE}{tag}"), ())
    after = held_at.get(tags.get(tag, ""), (tag,))  # a tag off main's history holds its own release
    return [t for t in before if t not in after], [t for t in after if t not in before]
