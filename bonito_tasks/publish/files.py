"""A published file's content: bytes in memory (the card, the stats, an index part) or a local file
(a data shard, written once to the publish's temporary folder). Every consumer (the Hub upload, the
store's dataset folder, the S3 export, the metrics) reads a file one at a time and hashes it by
streaming it, so a publish never holds the dataset in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bonito_tasks.contracts import file_sha256, sha256_hex

Content = bytes | Path


def size(content: Content) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def read(content: Content) -> bytes:
    return content if isinstance(content, bytes) else content.read_bytes()


def sha256(content: Content) -> str:
    return sha256_hex(content) if isinstance(content, bytes) else file_sha256(content)


def git_blob_id(content: Content) -> str:
    """The git blob id (sha1 of "blob <size>\\0" and the content) of a file the Hub stores in git."""
    digest = hashlib.sha1(b"blob %d\0" % size(content))
    if isinstance(content, bytes):
        digest.update(content)
        return digest.hexdigest()
    with content.open("rb") as f:
        return hashlib.file_digest(f, lambda: digest).hexdigest()
