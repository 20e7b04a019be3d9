"""Roll a published dataset back to a release: `make rollback REPO=org/name TO=<tag> [REASON=...] [LEDGER=skip]`.

Makes one new commit on the Hub repo's main whose tree equals the tagged release's (data/, the card,
`.bonito/` with its scorecard and index): history is kept, nothing is force-pushed; the commit
message names who rolled back and why. Then the ledger of the DAG's store records it: the runs whose
releases main held after the tag are revoked, so their documents are processed again on the next
run (`--ledger reprocess`, the default), or marked skipped (`--ledger skip`). A tag that does not
exist, a token that cannot write or a store without that DAG's ledger stops before any change. The
token: $HF_TOKEN (the endpoint: $HF_ENDPOINT). docs/releases.md.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import tempfile

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from bonito_tasks.errors import PermanentFailure
from bonito_tasks.release.tags import ROLLBACK_TITLE, RollbackRefused, release_tags, releases_undone


def rollback(repo_id: str, tag: str, token: str | None, *, reason: str, who: str,
             endpoint: str | None = None) -> tuple[str, bool]:
    """Make main's tree equal the tree of release `tag` (data, card and `.bonito/`) in one new commit,
    history kept. Returns (commit, created): created is False when main already held that tree.
    RollbackRefused, before any change, for a tag that does not exist or a missing token."""
    from huggingface_hub import HfApi, RepoFile

    from bonito_tasks.publish.hub import upload_dataset

    if not token:
        raise RollbackRefused(f"a Hugging Face token with write access to {repo_id} is needed to roll back")
    tags = release_tags(repo_id, token, endpoint)
    if tag not in tags:
        known = ", ".join(sorted(tags)[-10:]) or "none"
        raise RollbackRefused(f"dataset repo {repo_id} has no tag {tag!r} (its tags: {known}): nothing was changed")
    target = tags[tag]
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token, library_name="bonito-etl")
    tree = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=target, recursive=True)
            if isinstance(e, RepoFile)]
    with tempfile.TemporaryDirectory(prefix="bonito-rollback-") as cache:
        files = {}
        for path in tree:
            local = api.hf_hub_download(repo_id, path, repo_type="dataset", revision=target, cache_dir=cache)
            with open(local, "rb") as f:
                files[path] = f.read()
    commit, _ = upload_dataset(lambda existing: files, repo_id=repo_id, token=token, private=True,
                               replace_folders=("",), commit_message=f"{ROLLBACK_TITLE}{tag}",
                               commit_description=f"Rolled back by {who}: {reason}\nRestores the tree of "
                                                  f"{tag} ({target}); history kept.", endpoint=endpoint)
    return commit.commit_sha, commit.created


def default_store() -> str:
    """The nightly runs' store: `store` of $BONITO_SCHEDULE_CONFIG, else the form's default
    ($BONITO_STORE, else $AIRFLOW_HOME/bonito-store)."""
    from bonito_airflow.access import default_store as form_default
    from bonito_airflow.schedule import ENV_VAR, parse_settings

    return parse_settings(os.environ.get(ENV_VAR), ENV_VAR).get("store") or form_default(os.environ)


def update_ledger(store_uri: str, dag_id: str, repo_id: str, tag: str, commit: str, *, skip: bool, note: str,
                  token: str | None, endpoint: str | None) -> str:
    """Record the rollback in the ledger (ledger.record_rollback); returns what it did, in words."""
    from bonito_tasks.ledger import record_rollback
    from bonito_tasks.store import open_store

    removed, returned = releases_undone(repo_id, tag, token, endpoint)
    part = record_rollback(open_store(store_uri), dag_id, commit=commit, source=f"hf://datasets/{repo_id}@{commit}",
                           removed=removed, returned=returned, skip=skip, note=note)
    if part is None:
        return f"ledger of {dag_id} unchanged: main held no release after {tag}"
    lines = [f"ledger of {dag_id}: recorded in {part}"]
    if removed:
        lines.append(f"  rolled back: {', '.join(removed)}: " + (
            "marked skipped, their documents stay recorded as processed" if skip else
            "revoked, their documents are processed again on the next run"))
    if returned:
        lines.append(f"  back on main: {', '.join(returned)}: their documents count as processed again")
    return "\n".join(lines)


def check_ledger(store_uri: str, dag_id: str) -> None:
    """RollbackRefused, before any change, when the store holds no ledger of `dag_id` (a wrong --store)."""
    from bonito_tasks.ledger import ledger_prefix, live_parts
    from bonito_tasks.store import open_store

    store = open_store(store_uri)
    if not live_parts(store, dag_id):
        raise RollbackRefused(f"no ledger at {store.uri(ledger_prefix(dag_id))}: name the nightly runs' store and "
                              "DAG with --store and --dag-id (STORE= and DAG_ID= for make): nothing was changed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bonito_dev.rollback", description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="the Hub dataset repo, org/name")
    parser.add_argument("--to", help="the release tag to restore (release-<run>); without it: list the tags")
    parser.add_argument("--reason", default="", help="why (goes into the commit message)")
    parser.add_argument("--who", default=os.environ.get("BONITO_USER") or getpass.getuser())
    parser.add_argument("--ledger", choices=("reprocess", "skip"), default="reprocess",
                        help="the rolled-back runs' documents: processed again on the next run (default), or skipped")
    parser.add_argument("--store", help="the store of the runs that published (default: the nightly runs' store)")
    parser.add_argument("--dag-id", default="bonito_dataset", help="the DAG whose ledger records the rollback")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    token, endpoint = os.environ.get("HF_TOKEN"), os.environ.get("HF_ENDPOINT")
    try:
        validate_repo_id(args.repo)
    except HFValidationError as err:
        print(f"rollback refused: name the Hub dataset repo as org/name (REPO= for make): {err}", file=sys.stderr)
        return 2
    try:
        if not args.to:
            for tag, commit in sorted(release_tags(args.repo, token, endpoint).items()):
                print(f"{tag}\t{commit}")
            return 0
        if not args.reason.strip():
            raise PermanentFailure("say why with REASON=... (it goes into the commit message)")
        store = args.store or default_store()
        check_ledger(store, args.dag_id)
        sha, created = rollback(args.repo, args.to, token, reason=args.reason, who=args.who, endpoint=endpoint)
    except PermanentFailure as err:
        print(f"rollback refused: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the Hub unreachable or failing: said in one line, the token never shown
        message = f"{type(err).__name__}: {err}".replace(token, "***") if token else f"{type(err).__name__}: {err}"
        print(f"rollback failed talking to {endpoint or 'the Hub'}: {message[:500]}; run the same command again "
              "(a commit already made is found, not repeated)", file=sys.stderr)
        return 1
    print(f"{args.repo} main is now {args.to}'s tree at commit {sha}"
          + ("" if created else " (main already held it: no new commit)"))
    try:
        print(update_ledger(store, args.dag_id, args.repo, args.to, sha, skip=args.ledger == "skip",
                            note=f"{args.who}: {args.reason}", token=token, endpoint=endpoint))
    except Exception as err:  # the Hub is rolled back: the same command again records it
        print(f"the ledger was not updated ({type(err).__name__}: {err}): run the same command again "
              "(main already holds the tree: it makes no new commit, it records the rollback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
