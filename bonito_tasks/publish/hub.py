"""Upload a dataset to a Hugging Face Hub dataset repo in one atomic commit.

Every attempt compares the repo's current files with ours and commits only the difference, on
top of the head it looked at (`parent_commit`): a retry after a lost answer, or a re-run of the
same publish, finds nothing to change and makes no commit. After a lost answer the retry also
checks whether the head is the commit that got no answer (this upload's title, on the parent it
was sent with): then the upload reports that commit as its own (`HubCommit.created`). In "pr" mode the pull request is
opened first (titled with the commit message, which names the run) and the files are committed
to its ref `refs/pr/N` on top of its head: a retry finds the PR by title and a commit whose answer
was lost is not repeated (a lost answer to the PR creation itself can leave one empty draft PR).
Transient failures (408, 429, 5xx, timeouts, dropped connections, a head that moved under the commit)
are retried with full-jitter exponential backoff (bonito_tasks.retry); 401/403 and other errors are
not. 401/403 raise `PublishRejected`, a `PermanentFailure` (Airflow does not retry the task either);
transient errors that outlive the retries raise a plain `PublishError` (Airflow retries the task).
The token never appears in logs or errors. A file is given as bytes or as a local file (files.py):
a file is uploaded from its path (huggingface_hub streams it) and compared by a streamed sha256.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from bonito_tasks.compat import hf_request_timeout
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.publish import files as content
from bonito_tasks.publish.files import Content
from bonito_tasks.retry import RetryPolicy, network_errors, retry_after_s, transient_status

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, Discussion, HfApi, RepoFile

logger = logging.getLogger(__name__)

HEAD_MOVED = 412  # main moved under the commit: the retry rebuilds on the new head
HUB_RETRY = RetryPolicy()  # 5 tries, at most 120 s of silence per request
T = TypeVar("T")


class PublishError(RuntimeError):
    """Publishing failed; Airflow retries the task (transient errors that outlived the retries)."""


class PublishRejected(PublishError, PermanentFailure):
    """Publishing cannot succeed as configured: a missing or read-only token, a config that names
    no target, a bad export URI. Fix the connection or the params; a retry would fail the same way."""


@dataclass(frozen=True)
class HubCommit:
    repo_url: str
    commit_sha: str  # the commit that holds the files (the PR's head in "pr" mode)
    # True when this upload's commit holds the files, also when its answer was lost and a retry found
    # it on the branch; False when the repo (or an open PR) already held identical files.
    created: bool
    pr_url: str | None = None


class HubFiles:
    """The dataset repo's files at one commit; `read` downloads one."""

    def __init__(self, api: HfApi, repo_id: str, revision: str, files: Mapping[str, RepoFile]):
        self._api, self._repo_id, self._revision = api, repo_id, revision
        self.paths = sorted(files)

    def read(self, path: str) -> bytes:
        """The file at this commit, in one GET of its resolve URL, into memory (no cache file: an
        append reads each file once); the Hub redirects LFS and Xet files to their storage. Errors
        are huggingface_hub's (RepositoryNotFoundError, EntryNotFoundError, HfHubHTTPError)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self._repo_id, path, repo_type="dataset", revision=self._revision,
                         endpoint=self._api.endpoint)
        response = get_session().get(url, headers=build_hf_headers(token=self._api.token, library_name="bonito-etl"),
                                     follow_redirects=True)
        hf_raise_for_status(response)
        return response.content


def upload_dataset(
    build: Callable[[HubFiles], Mapping[str, Content]],
    *,
    repo_id: str,
    token: str | None,  # None or "": PublishRejected
    private: bool,
    replace_folders: tuple[str, ...],
    commit_message: str,
    commit_description: str = "",
    create_pr: bool = False,
    endpoint: str | None = None,
    retry: RetryPolicy = HUB_RETRY,
) -> tuple[HubCommit, dict[str, Content]]:
    """Make the dataset repo hold the files `build` returns (path in repo -> bytes or a local file), in
    one commit.

    `build` gets the repo's current files; every attempt calls it again on the head it looked at,
    so an append merges with what is really there. Repo files under `replace_folders` that are not
    in the result are deleted in the same commit; other files are left alone. With `create_pr` the
    commit goes to a pull request against main instead (this run's open one, else a new one),
    unless main already holds the files. Returns the commit and the files.
    """
    from huggingface_hub import HfApi

    if not token:
        raise PublishRejected(f"a Hugging Face token with write access to {repo_id} is needed to upload")
    api = HfApi(endpoint=endpoint, token=token, library_name="bonito-etl")

    repo_url = f"{api.endpoint}/datasets/{repo_id}"
    unanswered: list[tuple[str, str]] = []  # (revision, parent) of each commit sent whose answer was lost

    def attempt() -> tuple[HubCommit, dict[str, Content]]:
        head = _head_creating_repo(api, repo_id, private, retry.timeout_s)
        remote = _remote_files(api, repo_id, head)
        files = dict(build(HubFiles(api, repo_id, head, remote)))
        operations = _operations(files, remote, replace_folders)
        if not operations:
            ours = _is_unanswered_commit(api, repo_id, "main", head, commit_message, unanswered)
            logger.info("dataset repo %s already holds these files at %s; %s", repo_id, head,
                        "it is this upload's commit, whose answer was lost" if ours else "no commit")
            return HubCommit(repo_url, head, created=ours), files
        pr_url, revision = None, "main"
        if create_pr:
            pr = _pull_request(api, repo_id, commit_message, commit_description)
            assert pr.git_reference is not None  # a pull request's branch (None only for plain discussions)
            pr_url, revision = pr.url, pr.git_reference
            head = _commit_sha(api, repo_id, revision, retry.timeout_s)
            operations = _operations(files, _remote_files(api, repo_id, revision), replace_folders)
            if not operations:
                ours = _is_unanswered_commit(api, repo_id, revision, head, commit_message, unanswered)
                logger.info("pull request %s already holds these files%s", pr_url,
                            " (this upload's commit, whose answer was lost)" if ours else "")
                return HubCommit(repo_url, head, created=ours, pr_url=pr_url), files
        try:
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                commit_description=commit_description,
                repo_type="dataset",
                revision=revision,
                parent_commit=head,
            )
        except Exception:
            unanswered.append((revision, head))  # it may have been applied all the same
            raise
        logger.info("committed %d change(s) to dataset repo %s at %s: %s", len(operations), repo_id, revision, info.oid)
        return HubCommit(repo_url, info.oid, created=True, pr_url=pr_url), files

    with hf_request_timeout(retry.timeout_s):
        return _with_retries(attempt, retry, repo_id, token)


def _head_creating_repo(api: HfApi, repo_id: str, private: bool, timeout_s: float) -> str:
    """The commit at main; the repo is created first when it does not exist (or is not visible)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return _commit_sha(api, repo_id, "main", timeout_s)
    except RepositoryNotFoundError:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return _commit_sha(api, repo_id, "main", timeout_s)


def _commit_sha(api: HfApi, repo_id: str, revision: str, timeout_s: float) -> str:
    """The commit at `revision` of the dataset repo."""
    sha = api.repo_info(repo_id, repo_type="dataset", revision=revision, timeout=timeout_s).sha
    assert sha is not None  # the Hub names the commit of every revision it finds
    return sha


def _is_unanswered_commit(
    api: HfApi, repo_id: str, revision: str, head: str, title: str, unanswered: list[tuple[str, str]]
) -> bool:
    """Whether `head` is a commit this upload sent but got no answer for: it carries this upload's
    title (which names the run) and sits right on a parent such a commit was sent with. Asks the
    Hub only after a lost answer."""
    parents = {parent for rev, parent in unanswered if rev == revision}
    if not parents:
        return False
    commits = api.list_repo_commits(repo_id, repo_type="dataset", revision=head)
    return (len(commits) > 1 and commits[0].commit_id == head and commits[0].title == title
            and commits[1].commit_id in parents)


def _pull_request(api: HfApi, repo_id: str, title: str, description: str) -> Discussion:
    """The open (or draft) pull request titled `title`, opened when there is none."""
    for pr in api.get_repo_discussions(repo_id, repo_type="dataset", discussion_type="pull_request"):
        if pr.title == title and pr.status in ("open", "draft"):
            return pr
    return api.create_pull_request(repo_id, title, description=description, repo_type="dataset")


def _remote_files(api: HfApi, repo_id: str, revision: str) -> dict[str, RepoFile]:
    from huggingface_hub import RepoFile

    tree = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
    return {entry.path: entry for entry in tree if isinstance(entry, RepoFile)}


def _operations(files: Mapping[str, Content], remote: Mapping[str, RepoFile], replace_folders: tuple[str, ...]) -> list:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops = {p: CommitOperationAdd(p, data if isinstance(data, bytes) else str(data)) for p, data in files.items()}
    adds = [ops[p] for p in sorted(files) if not _same(remote.get(p), ops[p], files[p])]
    stale = [
        CommitOperationDelete(p) for p in sorted(remote) if p.startswith(replace_folders) and p not in files
    ]
    return adds + stale


def _same(remote: RepoFile | None, op: CommitOperationAdd, data: Content) -> bool:
    """Whether a remote file holds exactly `data` (LFS/Xet files by sha256, which `op` computes once
    and the upload reuses; others by git blob id)."""
    if remote is None or remote.size != op.upload_info.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == op.upload_info.sha256.hex()
    return remote.blob_id == content.git_blob_id(data)


def _with_retries(call: Callable[[], T], policy: RetryPolicy, repo_id: str, token: str) -> T:
    def log_retry(attempt: int, err: BaseException, delay: float) -> None:
        status = _status(err)
        logger.warning(
            "upload to %s: attempt %d/%d failed (%s); retrying in %.2fs",
            repo_id, attempt, policy.attempts, f"HTTP {status}" if status else type(err).__name__, delay,
        )

    try:
        return policy.call(call, retryable=_transient, retry_after=_retry_after, on_retry=log_retry)
    except PermanentFailure:
        raise
    except Exception as err:
        status = _status(err)
        if status in (401, 403):
            raise PublishRejected(
                f"the Hugging Face token is missing or lacks write access to dataset repo {repo_id} (HTTP {status})"
            ) from None
        tries = f"after {policy.attempts} attempts" if _transient(err) else "and cannot be retried"
        cause = f"{type(err).__name__}: {_redact(str(err), token)}"
        raise PublishError(f"upload to dataset repo {repo_id} failed {tries}: {cause}") from None


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _transient(err: BaseException) -> bool:
    import httpx2

    status = _status(err)
    return status == HEAD_MOVED or transient_status(status) or isinstance(err, network_errors(httpx2))


def _retry_after(err: BaseException) -> float | None:
    return retry_after_s(getattr(getattr(err, "response", None), "headers", None))


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
