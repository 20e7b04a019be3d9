"""Where documents come from: a local file or folder, or an s3:// prefix."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int
    read: Callable[[], bytes]


def iter_source(source: str, **s3_client_kwargs: Any) -> Iterator[SourceFile]:
    """Files of a source in a stable (sorted) order."""
    if source.startswith("s3://"):
        yield from _iter_s3(source, **s3_client_kwargs)
    else:
        yield from _iter_local(source[len("file://"):] if source.startswith("file://") else source)


def _iter_local(path: str) -> Iterator[SourceFile]:
    root = Path(path).resolve()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        raise FileNotFoundError(f"source {path!r} is neither a file nor a folder")
    for file in files:
        yield SourceFile(uri=str(file), size=file.stat().st_size, read=file.read_bytes)


def _iter_s3(uri: str, client: Any = None, **client_kwargs: Any) -> Iterator[SourceFile]:
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not match:
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, prefix = match.groups()
    if client is None:
        import boto3

        client = boto3.client("s3", **client_kwargs)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/") or os.path.basename(key).startswith("."):
                continue
            yield SourceFile(
                uri=f"s3://{bucket}/{key}",
                size=obj["Size"],
                read=lambda key=key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
            )
