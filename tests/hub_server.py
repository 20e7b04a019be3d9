"""A test fixture standing in for the Hugging Face Hub, which is unreachable from here.

A stdlib HTTP server on 127.0.0.1 (random port) that speaks the subset of the Hub protocol that
huggingface_hub 2.x and datasets 5.x use to create a dataset repo, commit files and read them back,
and open pull requests (a commit with `create_pr=1`, or `POST .../discussions`, makes `refs/pr/N`).
Preupload answers "regular" for every file, so clients send contents inside the commit and never
use LFS or Xet; the tree lists *.parquet files as the Hub lists LFS files. With `lfs=True` it
answers "lfs" for *.parquet files instead: clients upload them through the LFS batch API (a PUT of
each blob the server does not hold yet) and the commit names them by sha256, as on the Hub (the
client must not use Xet: set huggingface_hub.constants.HF_HUB_DISABLE_XET). Repos and commits live
in memory so tests can inspect them. Faults can be
injected: fail the next N matching requests with a status, stall them (then handle them
normally, as a server whose answer the client gave up on), or lose their answer (handle them, then
answer an error status).

    with HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub/datasets are imported
        hub.fail("POST", r"/commit/", status=503, times=2)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_ROUTE = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<action>preupload|commit|commits|tree|paths-info|revision)/(?P<rev>[^/]+)(?P<rest>/.*)?)?$"
)
DISCUSSION_ROUTE = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/discussions(?:/(?P<num>\d+))?$"
)
TAG_ROUTE = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/tag/(?P<rev>[^/]+)$")
REFS_ROUTE = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/refs$")
RESOLVE_ROUTE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
LFS_BATCH_ROUTE = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
LFS_UPLOAD_ROUTE = re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$")
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


@functools.cache  # the same file object is hashed once (the real Hub stores its hashes too)
def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    files: dict[str, bytes]  # the whole tree after this commit
    parent: str | None


@dataclass
class Discussion:
    num: int
    title: str
    description: str
    is_pull_request: bool
    status: str = "open"  # open, closed, merged, draft


@dataclass
class Repo:
    repo_id: str
    repo_type: str  # "model", "dataset" or "space"
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    discussions: list[Discussion] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit oid

    def resolve(self, revision: str) -> Commit | None:
        revision = revision.removeprefix("refs/tags/")
        oid = self.refs.get(revision, self.tags.get(revision, revision))
        return self.commits.get(oid)

    def open_pull_requests(self) -> list[Discussion]:
        return [d for d in self.discussions if d.is_pull_request and d.status in ("open", "draft")]

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits reachable from the branch, newest first."""
        commits, oid = [], self.refs.get(branch)
        while oid:
            commits.append(self.commits[oid])
            oid = self.commits[oid].parent
        return commits


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    times: int
    status: int | None = None  # answer with this status, or
    stall_s: float = 0.0  # sleep this long, then handle the request
    applied: bool = False  # with status: handle the request first, then answer status (a lost answer)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer:
    def __init__(self, token: str = "hf_test_write_token", read_token: str = "hf_test_read_token", lfs: bool = False):
        self.token, self.read_token, self.lfs = token, read_token, lfs
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> blob uploaded through the LFS batch API
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.sent: list[tuple[str, str, int]] = []  # (method, path, body bytes) of every answer
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # Test helpers.

    def fail(self, method: str, path_pattern: str, status: int, times: int = 1) -> None:
        with self._lock:
            self._faults.append(Fault(method, re.compile(path_pattern), times, status=status))

    def stall(self, method: str, path_pattern: str, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._faults.append(Fault(method, re.compile(path_pattern), times, stall_s=seconds))

    def lose_answer(self, method: str, path_pattern: str, status: int = 502, times: int = 1) -> None:
        """Handle the next matching requests (a commit is applied), then answer `status` instead of
        the result, as a proxy that lost the server's answer would."""
        with self._lock:
            self._faults.append(Fault(method, re.compile(path_pattern), times, status=status, applied=True))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being handled (a stalled one may still change a repo)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError("hub server still busy")

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def seed(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset") -> None:
        """Create a repo holding `files` in one commit, without HTTP (a benchmark's history). Its
        files' hashes are computed now, as the Hub stores them when a commit lands (else the first
        listing of a large history would hash all of it while a benchmark measures)."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private=True)
            self._commit(repo, "seeded", "", {".gitattributes": GITATTRIBUTES, **files}, parent=None)
            _tree_entries(files, "", recursive=True)

    def merge(self, repo_id: str, num: int, repo_type: str = "dataset") -> None:
        """Merge pull request `num` into main (its tree becomes main's), as a reviewer would."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            pr = next(d for d in repo.discussions if d.num == num and d.is_pull_request)
            files = repo.commits[repo.refs[f"refs/pr/{num}"]].files
            self._commit(repo, f"Merge pull request #{num}", pr.title, dict(files), repo.refs["main"])
            pr.status = "merged"

    def count(self, method: str, path_pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(path_pattern, p))

    # Request handling, called by the handler threads.

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                    fault.times -= 1
                    return fault
        return None

    def _auth(self, headers: Any, repo: Repo | None, write: bool) -> None:
        supplied = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if write or (repo is not None and repo.private):
            if not supplied:
                raise HubError(401, "Repository not found", "RepoNotFound")
            if supplied not in (self.token, self.read_token):
                raise HubError(401, "Invalid credentials in Authorization header")
            if write and supplied != self.token:
                raise HubError(403, "You don't have the rights to create or change this repo")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _handle(self, method: str, raw_path: str, query: dict, headers: Any, body: bytes) -> tuple[int, dict, bytes]:
        with self._lock:
            if raw_path == "/api/repos/create" and method == "POST":
                return self._create_repo(headers, json.loads(body))
            if raw_path == "/api/validate-yaml" and method == "POST":
                return _json({"errors": [], "warnings": []})
            if (match := LFS_BATCH_ROUTE.match(raw_path)) and method == "POST":
                self._auth(headers, self._repo((match["type"] or "models")[:-1], match["repo"]), write=True)
                return _json({"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], "authenticated": True}
                    | ({} if o["oid"] in self.lfs_objects else
                       {"actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}})
                    for o in json.loads(body)["objects"]]})
            if (match := LFS_UPLOAD_ROUTE.match(raw_path)) and method == "PUT":
                if hashlib.sha256(body).hexdigest() != match["oid"]:
                    raise HubError(400, "the blob does not match its sha256")
                self.lfs_objects[match["oid"]] = body
                return 200, {}, b""
            if match := API_ROUTE.match(raw_path):
                repo_type = match["type"][:-1]
                repo = self._repo(repo_type, match["repo"])
                self._auth(headers, repo, write=method == "POST" and match["action"] in ("preupload", "commit"))
                rev = unquote(match["rev"] or "main")
                rest = unquote(match["rest"] or "").lstrip("/")
                return self._api(method, repo, match["action"], rev, rest, query, body)
            if (match := TAG_ROUTE.match(raw_path)) and method == "POST":  # create a tag
                repo = self._repo(match["type"][:-1], match["repo"])
                self._auth(headers, repo, write=True)
                commit, name = repo.resolve(unquote(match["rev"])), json.loads(body)["tag"]
                if commit is None:
                    raise HubError(404, f"Invalid rev id: {match['rev']}", "RevisionNotFound")
                if name in repo.tags:
                    raise HubError(409, f"tag {name} already exists")
                repo.tags[name] = commit.oid
                return _json({"success": True})
            if (match := REFS_ROUTE.match(raw_path)) and method == "GET":  # branches, tags, PRs
                repo = self._repo(match["type"][:-1], match["repo"])
                self._auth(headers, repo, write=False)
                def ref(name: str, kind: str, oid: str) -> dict:
                    return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}
                return _json({"branches": [ref(n, "heads", o) for n, o in repo.refs.items() if "/" not in n],
                              "converts": [], "tags": [ref(n, "tags", o) for n, o in repo.tags.items()],
                              "pullRequests": [{"name": n, "ref": n, "targetCommit": o}
                                               for n, o in repo.refs.items() if n.startswith("refs/pr/")]})
            if match := DISCUSSION_ROUTE.match(raw_path):
                repo = self._repo(match["type"][:-1], match["repo"])
                self._auth(headers, repo, write=method == "POST")
                return self._discussions(method, repo, int(match["num"]) if match["num"] else None, query, body)
            if (match := RESOLVE_ROUTE.match(raw_path)) and method in ("GET", "HEAD"):
                repo = self._repo(match["type"][:-1] if match["type"] else "model", match["repo"])
                self._auth(headers, repo, write=False)
                return self._resolve(repo, unquote(match["rev"]), unquote(match["path"]), headers)
        raise HubError(404, f"no route for {method} {raw_path}")

    def _create_repo(self, headers: Any, payload: dict) -> tuple[int, dict, bytes]:
        self._auth(headers, None, write=True)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return _json({"error": "You already created this repo", "url": url}, status=409)
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private)
        self._commit(repo, "initial commit", "", {".gitattributes": GITATTRIBUTES}, parent=None)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _commit(
        self, repo: Repo, title: str, description: str, files: dict[str, bytes], parent: str | None, ref: str = "main"
    ) -> Commit:
        tree = ",".join(f"{p}:{git_blob_sha1(d)}" for p, d in sorted(files.items()))
        oid = hashlib.sha1(f"{parent}\n{title}\n{description}\n{tree}\n{len(repo.commits)}".encode()).hexdigest()
        commit = repo.commits[oid] = Commit(oid, title, description, files, parent)
        repo.refs[ref] = oid
        return commit

    def _open_pr(self, repo: Repo, title: str, description: str, status: str = "draft") -> Discussion:
        pr = Discussion(len(repo.discussions) + 1, title, description, is_pull_request=True, status=status)
        repo.discussions.append(pr)
        repo.refs[f"refs/pr/{pr.num}"] = repo.refs["main"]
        return pr

    def _discussion_url(self, repo: Repo, num: int) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}/discussions/{num}"

    def _discussion_json(self, repo: Repo, d: Discussion) -> dict:
        return {
            "num": d.num, "title": d.title, "status": d.status, "isPullRequest": d.is_pull_request,
            "createdAt": "2024-01-01T00:00:00.000Z", "author": {"name": "bonito-bot"},
            "repo": {"name": repo.repo_id, "type": repo.repo_type}, "pinned": False, "numComments": 1,
        }

    def _discussions(self, method: str, repo: Repo, num: int | None, query: dict, body: bytes):
        if method == "POST" and num is None:
            payload = json.loads(body)
            if payload.get("pullRequest"):
                d = self._open_pr(repo, payload["title"], payload.get("description") or "")
            else:
                d = Discussion(len(repo.discussions) + 1, payload["title"], payload.get("description") or "", False)
                repo.discussions.append(d)
            return _json({"num": d.num, "url": self._discussion_url(repo, d.num)})
        if method == "GET" and num is None:
            wanted_type = query.get("type", ["all"])[0]
            wanted_status = query.get("status", ["all"])[0]
            found = [
                self._discussion_json(repo, d) for d in repo.discussions
                if wanted_type == "all" or (wanted_type == "pull_request") == d.is_pull_request
                if wanted_status == "all" or (d.status in ("open", "draft")) == (wanted_status == "open")
            ]
            page = int(query.get("p", ["0"])[0])
            return _json({"discussions": found[page * 50 : (page + 1) * 50], "count": len(found), "start": page * 50})
        if method == "GET":
            d = next((d for d in repo.discussions if d.num == num), None)
            if d is None:
                raise HubError(404, f"Discussion {num} not found")
            event = {
                "id": f"event-{num}", "type": "comment", "createdAt": "2024-01-01T00:00:00.000Z",
                "author": {"name": "bonito-bot"},
                "data": {"edited": False, "hidden": False, "latest": {"raw": d.description}},
            }
            details = {"events": [event], "filesWithConflicts": [], "diff": ""}
            if d.is_pull_request:
                details["changes"] = {"base": "refs/heads/main"}
            return _json(self._discussion_json(repo, d) | details)
        raise HubError(405, f"{method} not supported on discussions")

    def _api(self, method: str, repo: Repo, action: str | None, rev: str, rest: str, query: dict, body: bytes):
        if action is None or action == "revision":
            return self._repo_info(repo, rev)
        head = repo.resolve(rev)
        if head is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if action == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "lfs" if self.lfs and f["path"].endswith(".parquet") else "regular",
                 "shouldIgnore": False}
                | ({"oid": git_blob_sha1(head.files[f["path"]])} if f["path"] in head.files else {})
                for f in json.loads(body)["files"]
            ]
            return _json({"files": files, "commitOid": head.oid})
        if action == "commits":  # history from the revision, newest first (one page)
            commits, oid = [], head.oid
            while oid:
                c = repo.commits[oid]
                commits.append({"id": c.oid, "title": c.title, "message": c.description,
                                "authors": [{"user": "bonito-bot"}], "date": "2024-01-01T00:00:00.000Z"})
                oid = c.parent
            return _json(commits)
        if action == "commit":
            return self._apply_commit(repo, rev, head, body, create_pr=query.get("create_pr", ["0"])[0] == "1")
        if action == "tree":
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries = _tree_entries(head.files, rest, recursive)
            if entries is None:
                raise HubError(404, f"{rest} does not exist", "EntryNotFound")
            return _json(entries)
        if action == "paths-info":
            wanted = parse_qs(body.decode())["paths"]
            return _json([e for p in wanted for e in _path_entry(head.files, p)])
        raise HubError(404, f"no route for {method} {action}")

    def _apply_commit(self, repo: Repo, rev: str, head: Commit, body: bytes, create_pr: bool):
        if rev != "main" and not rev.startswith("refs/pr/"):
            raise HubError(400, "this fixture commits to main or to a pull request only")
        if create_pr and rev != "main":
            raise HubError(400, "create_pr opens a pull request against main")
        pr = next((d for d in repo.discussions if rev == f"refs/pr/{d.num}"), None)
        if pr and pr.status not in ("open", "draft"):
            raise HubError(403, f"pull request {pr.num} is {pr.status}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unsupported commit operation {key}")
        if create_pr:
            pr = self._open_pr(repo, header["summary"], header.get("description", ""), status="open")
        ref = f"refs/pr/{pr.num}" if pr else rev
        commit = self._commit(repo, header["summary"], header.get("description", ""), files, parent=head.oid, ref=ref)
        if pr:
            pr.status = "open"  # as on the Hub, a draft PR opens with its first commit
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        commit_url = f"{self.url}/{prefix}{repo.repo_id}/commit/{commit.oid}"
        pr_url = self._discussion_url(repo, pr.num) if create_pr else None
        return _json({"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    def _repo_info(self, repo: Repo, rev: str):
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return _json(
            {
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                "lastModified": "2024-01-01T00:00:00.000Z",
                "createdAt": "2024-01-01T00:00:00.000Z",
            }
        )

    def _resolve(self, repo: Repo, rev: str, path: str, headers: Any):
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = commit.files[path]
        response_headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or ""):
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            response_headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, response_headers, data[start : end + 1]
        return 200, response_headers, data


@functools.cache
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict] | None:
    prefix = f"{folder.rstrip('/')}/" if folder else ""
    below = {p[len(prefix):]: d for p, d in files.items() if p.startswith(prefix)}
    if not below:
        return None
    entries: dict[str, dict] = {}
    for relative, data in sorted(below.items()):
        parts = relative.split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder_path = prefix + "/".join(parts[:i])
            entries.setdefault(folder_path, _folder_entry(files, folder_path))
        if recursive or len(parts) == 1:
            entries[prefix + relative] = _file_entry(prefix + relative, data)
    return list(entries.values())


def _path_entry(files: dict[str, bytes], path: str) -> list[dict]:
    path = path.strip("/")
    if path in files:
        return [_file_entry(path, files[path])]
    if any(p.startswith(path + "/") for p in files):
        return [_folder_entry(files, path)]
    return []


def _file_entry(path: str, data: bytes) -> dict:
    if not path.endswith(".parquet"):
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    # Stored whole here, but listed as the Hub lists LFS/Xet files: git holds a pointer, `lfs` the content hash.
    sha256 = _sha256(data)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    lfs = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(pointer), "lfs": lfs}


def _folder_entry(files: dict[str, bytes], path: str) -> dict:
    children = ",".join(f"{p}:{git_blob_sha1(d)}" for p, d in sorted(files.items()) if p.startswith(path + "/"))
    return {"type": "directory", "path": path, "oid": hashlib.sha1(children.encode()).hexdigest()}


def _json(value: Any, status: int = 200) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            split = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hub._lock:
                hub.requests.append((self.command, split.path))
                hub._in_flight += 1
            try:
                fault = hub._take_fault(self.command, split.path)
                if fault and fault.stall_s:
                    time.sleep(fault.stall_s)
                if fault and fault.status and fault.applied:
                    try:
                        hub._handle(self.command, split.path, parse_qs(split.query), self.headers, body)
                    except HubError:
                        pass
                if fault and fault.status:
                    status, headers, payload = _json({"error": f"injected fault {fault.status}"}, fault.status)
                else:
                    try:
                        status, headers, payload = hub._handle(
                            self.command, split.path, parse_qs(split.query), self.headers, body
                        )
                    except HubError as err:
                        status, headers, payload = _json({"error": err.message}, err.status)
                        headers["X-Error-Message"] = err.message
                        if err.code:
                            headers["X-Error-Code"] = err.code
                self._send(status, headers, payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)
            finally:
                with hub._idle:
                    hub._in_flight -= 1
                    hub._idle.notify_all()

        def _send(self, status: int, headers: dict, payload: bytes) -> None:
            with hub._lock:
                hub.sent.append((self.command, urlsplit(self.path).path, 0 if self.command == "HEAD" else len(payload)))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    return Handler
