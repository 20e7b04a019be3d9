"""Roll a published dataset back to a release: `make rollback REPO=org/name TO=<tag> [REASON=...]`.

Makes one new commit on the Hub repo's main whose tree equals the tagged release's (data/, the card,
`.bonito/` with its scorecard and index): history is kept, nothing is force-pushed; the commit
message names who rolled back and why. A tag that does not exist, or a token that cannot write,
stops before any change. The token: $HF_TOKEN (the endpoint: $HF_ENDPOINT). docs/releases.md.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import tempfile

from bonito_tasks.errors import PermanentFailure
from bonito_tasks.release.tags import RollbackRefused, release_tags


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
                               replace_folders=("",), commit_message=f"Roll back to {tag}",
                               commit_description=f"Rolled back by {who}: {reason}\nRestores the tree of "
                                                  f"{tag} ({target}); history kept.", endpoint=endpoint)
    return commit.commit_sha, commit.created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bonito_dev.rollback", description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="the Hub dataset repo, org/name")
    parser.add_argument("--to", help="the release tag to restore (release-<run>); without it: list the tags")
    parser.add_argument("--reason", default="", help="why (goes into the commit message)")
    parser.add_argument("--who", default=os.environ.get("BONITO_USER") or getpass.getuser())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    token, endpoint = os.environ.get("HF_TOKEN"), os.environ.get("HF_ENDPOINT")
    try:
        if not args.to:
            for tag, commit in sorted(release_tags(args.repo, token, endpoint).items()):
                print(f"{tag}\t{commit}")
            return 0
        if not args.reason.strip():
            raise PermanentFailure("say why with REASON=... (it goes into the commit message)")
        sha, created = rollback(args.repo, args.to, token, reason=args.reason, who=args.who, endpoint=endpoint)
    except PermanentFailure as err:
        print(f"rollback refused: {err}", file=sys.stderr)
        return 2
    print(f"{args.repo} main is now {args.to}'s tree at commit {sha}"
          + ("" if created else " (main already held it: no new commit)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
