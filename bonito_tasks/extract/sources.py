"""Where documents come from: a local file or folder, or an s3:// prefix.

A file the walk itself cannot use (a symlink out of the source root, a dangling link) is yielded
with `reject` set, so it lands in `rejects` like any other bad file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from bonito_tasks.errors import PermanentFailure
from bonito_tasks.store import parse_s3_uri

# A folder written by `datasets.Dataset.save_to_disk` holds these two files; it is read as one source.
HF_DATASET_MARKERS = ("dataset_info.json", "state.json")
HF_DATASET = ".hf_dataset"  # the pseudo-suffix such a folder is read under


class SourceNotFound(PermanentFailure):
    """The source does not exist: a local path that is neither a file nor a folder, or an S3 bucket
    that does not exist. (An existing but empty folder or prefix is not an error here.)"""


class SourceAccessDenied(PermanentFailure):
    """The source cannot be listed with these credentials (S3 403)."""


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int
    read: Callable[[int], bytes]  # read(max_bytes): at most max_bytes + 1 bytes, so oversize shows
    suffix: str = ""
    local_path: str | None = None
    reject: tuple[str, str] | None = None  # (reason, detail) found while listing


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def matches(relative: str, include: list[str], exclude: list[str]) -> bool:
    """Glob filter on a '/'-separated path relative to the source: '*' spans folders, as in fnmatch."""
    def hit(pattern: str) -> bool:
        # "**/x" also matches "x" at the top level.
        return fnmatchcase(relative, pattern) or (pattern.startswith("**/") and fnmatchcase(relative, pattern[3:]))

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def iter_source(source: str, include: Sequence[str] = ("**",), exclude: Sequence[str] = (),
                **s3_client_kwargs: Any) -> Iterator[SourceFile]:
    """Files of a source in a stable (sorted) order, filtered by include/exclude globs.

    Raises SourceNotFound for a local path that does not exist or an S3 bucket that does not
    exist, SourceAccessDenied when S3 refuses the listing (both PermanentFailures: a retry cannot
    fix them). An existing folder or prefix without files yields nothing."""
    include, exclude = list(include), list(exclude)
    if source.startswith("s3://"):
        yield from _iter_s3(source, include, exclude, **s3_client_kwargs)
    else:
        yield from _iter_local(source[len("file://"):] if source.startswith("file://") else source, include, exclude)


def source_file(row: dict, client: Any = None) -> SourceFile:
    """The SourceFile of a listing row written by the plan (see contracts.SOURCE_FILES); `client`
    is the boto3 S3 client that reads s3:// rows."""
    uri, suffix = row["uri"], row["suffix"]
    if row["reject_reason"]:
        return SourceFile(uri, row["size_bytes"], lambda _: b"", suffix,
                          reject=(row["reject_reason"], row["reject_detail"] or ""))
    if suffix == HF_DATASET:
        return SourceFile(uri=uri, size=row["size_bytes"], read=lambda _: b"", suffix=HF_DATASET,
                          local_path=row["local_path"])
    if row["local_path"]:
        return _local_file(Path(row["local_path"]), uri)
    bucket, key = parse_s3_uri(uri)
    return _s3_file(client, bucket, key, row["size_bytes"])


def _s3_file(client: Any, bucket: str, key: str, size: int) -> SourceFile:
    def read(max_bytes: int) -> bytes:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read(max_bytes + 1)  # streamed: never more than the limit allows
        finally:
            body.close()

    return SourceFile(uri=f"s3://{bucket}/{key}", size=size, read=read, suffix=_suffix(key))


def _unreadable(uri: str, err: OSError) -> SourceFile:
    reason = f"{type(err).__name__}: {err.strerror}"
    return SourceFile(uri, 0, lambda _: b"", _suffix(uri), reject=("unreadable", reason))


def _local_file(path: Path, uri: str) -> SourceFile:
    def read(max_bytes: int) -> bytes:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)

    try:
        size = path.stat().st_size
    except OSError as err:  # gone or inaccessible since it was listed
        return _unreadable(uri, err)
    return SourceFile(uri=uri, size=size, read=read, suffix=_suffix(path.name), local_path=str(path))


def _hf_dataset(folder: Path) -> SourceFile:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return SourceFile(uri=str(folder), size=size, read=lambda _: b"", suffix=HF_DATASET, local_path=str(folder))


def _iter_local(path: str, include: list[str], exclude: list[str]) -> Iterator[SourceFile]:
    root = Path(path).absolute()
    if root.is_file():
        yield _local_file(root.resolve(), str(root))
        return
    if not root.is_dir():
        raise SourceNotFound(f"source {path!r} does not exist (no such file or folder: {root})")
    if all((root / m).is_file() for m in HF_DATASET_MARKERS):
        yield _hf_dataset(root)
        return
    real_root = root.resolve()
    errors: list[OSError] = []  # folders os.walk could not list
    for folder, dirs, files in os.walk(root, onerror=errors.append):  # does not follow symlinked folders
        while errors:
            err = errors.pop()
            yield _unreadable(err.filename, err)
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in list(dirs):  # saved datasets and symlinked folders are entries, not walked into
            if (here / d).is_symlink() or all((here / d / m).is_file() for m in HF_DATASET_MARKERS):
                dirs.remove(d)
                files.append(d)
        for name in sorted(files):
            if name.startswith("."):
                continue
            entry = here / name
            relative = entry.relative_to(root).as_posix()
            if not matches(relative, include, exclude):
                continue
            uri = str(entry)
            target = entry.resolve()
            if target != real_root and real_root not in target.parents:
                yield SourceFile(uri, 0, lambda _: b"", _suffix(name),
                                 reject=("symlink_escape", f"links to {target}, outside the source root {real_root}"))
            elif not target.exists():
                yield SourceFile(uri, 0, lambda _: b"", _suffix(name), reject=("unreadable", "dangling symlink"))
            elif target.is_dir():
                if all((target / m).is_file() for m in HF_DATASET_MARKERS):
                    yield _hf_dataset(entry)
            elif target.is_file():
                yield _local_file(entry, uri)
    for err in errors:
        yield _unreadable(err.filename, err)


def _iter_s3(uri: str, include: list[str], exclude: list[str], client: Any = None,
             **client_kwargs: Any) -> Iterator[SourceFile]:
    bucket, prefix = parse_s3_uri(uri)
    if prefix and uri.endswith("/"):
        prefix += "/"  # a folder: list only what is inside it
    if client is None:
        import boto3

        client = boto3.client("s3", **client_kwargs)
    base = prefix[:prefix.rfind("/") + 1]  # globs match keys relative to the prefix's folder
    for page in _s3_pages(client, uri, bucket, prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            name = os.path.basename(key)
            if key.endswith("/") or name.startswith("."):
                continue
            if not matches(key[len(base):], include, exclude):
                continue
            yield _s3_file(client, bucket, key, obj["Size"])


S3_NOT_FOUND = ("NoSuchBucket",)
S3_DENIED = ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")


def _s3_pages(client: Any, uri: str, bucket: str, prefix: str) -> Iterator[dict]:
    """The listing pages of s3://bucket/prefix; a missing bucket or a refused listing raise a
    PermanentFailure naming the source, other errors (throttling, 5xx) propagate to be retried."""
    from botocore.exceptions import ClientError

    try:
        yield from client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    except ClientError as err:
        error = err.response.get("Error", {})
        code, status = error.get("Code"), err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in S3_NOT_FOUND:
            raise SourceNotFound(f"source {uri}: bucket {bucket!r} does not exist") from None
        if code in S3_DENIED or status == 403:
            raise SourceAccessDenied(f"source {uri}: access denied listing bucket {bucket!r} ({code}); "
                                     f"check the credentials of connection aws_default") from None
        raise
