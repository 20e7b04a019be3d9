"""Artifact store: a local directory or an S3 prefix, with atomic writes and the run layout.

Layout: <root>/<dag_id>/<run_id>/<stage>[/shard-NNNNN]/{part-NNNNN.<table>.parquet, _manifest.json}
(see stage.py, which writes it). The manifest is written last; a stage directory without one
holds nothing committed.
"""

from __future__ import annotations

import builtins
import io
import os
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from bonito_tasks.contracts import TABLES, Manifest, RunRef, ShardRef, sha256_hex
from bonito_tasks.errors import PermanentFailure


class StoreError(RuntimeError):
    pass


class StoreNotWritable(StoreError, PermanentFailure):
    """The store cannot be written (a read-only folder, a path that is a file, a bucket that does
    not exist, access denied): fix the `store` param or the credentials; a retry cannot help."""


PROBE_KEY = ".bonito-write-probe"  # written and deleted by probe_writable
# S3 error codes that mean the store can never be written as configured (others, such as 5xx
# or throttling, are transient and propagate).
S3_NOT_WRITABLE = ("NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                   "SignatureDoesNotMatch", "InvalidBucketName", "403")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3://bucket/prefix URI; the prefix without leading or trailing '/'."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not match:
        raise StoreError(f"not an s3://bucket[/prefix] URI (no bucket, or not s3://): {uri!r}")
    return match.group(1), match.group(2).strip("/")


class ArtifactStore(ABC):
    """Keys are '/'-separated paths relative to the store root."""

    root_uri: str

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key}"

    def key(self, uri: str) -> str:
        root = self.root_uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise StoreError(f"{uri} is not inside the store {self.root_uri}")
        return uri[len(root):]

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write atomically: readers see the old object or the whole new one, never a part."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under prefix, sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abstractmethod
    def write_file(self, key: str, path: Path) -> str:
        """`write_bytes(key, path.read_bytes())` without holding the file: streamed from it (on S3
        a multipart upload, whose object appears only when complete)."""

    @abstractmethod
    def copy(self, source: str, key: str) -> None:
        """Copy the object `source` to `key` (atomically, as write_bytes), within the store: on S3
        a server-side copy, whose bytes never pass through this process."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A seekable reader of one object that fetches only the bytes read (Parquet footers and
        single row groups, for paging through a table without loading it)."""

    def probe_writable(self) -> None:
        """Write and delete a small marker under the root; raises StoreNotWritable (a
        PermanentFailure) with the store's URI and the OS or S3 error when that is impossible.
        Transient S3 errors propagate unchanged (a retry may succeed)."""
        key = f"{PROBE_KEY}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.write_bytes(key, b"bonito write probe\n")
            self.delete(key)
        except OSError as err:
            raise StoreNotWritable(f"the artifact store {self.root_uri} is not writable: "
                                   f"{type(err).__name__}: {err}") from None
        except Exception as err:
            code = _s3_error_code(err)
            if code is None or code not in S3_NOT_WRITABLE:
                raise
            raise StoreNotWritable(f"the artifact store {self.root_uri} is not writable: {code}: {err}") from None

    def read_manifest(self, uri_or_key: str) -> Manifest:
        key = self.key(uri_or_key) if "://" in uri_or_key or uri_or_key.startswith("/") else uri_or_key
        return Manifest.model_validate_json(self.read_bytes(key))

    # builtins.list: in this class `list` is the method that lists keys.
    def read_shard(self, manifest: Manifest, table: str, index: int,
                   columns: builtins.list[str] | None = None) -> pa.Table:
        """One Parquet shard of a table of a committed stage, cast to the contract schema."""
        stage_key = self.key(manifest.uri).rsplit("/", 1)[0]
        return self.read_part(stage_key, manifest.shards_of(table)[index], columns)

    def read_part(self, stage_key: str, ref: ShardRef, columns: builtins.list[str] | None = None) -> pa.Table:
        """One Parquet part of a stage folder, checked against its sha256 and the contract schema.
        Arrow's allocator first gives back the pages freed since (a task streams parts: it would
        otherwise keep the pages of every part read, and its RSS grow with the run)."""
        pa.default_memory_pool().release_unused()
        data = self.read_bytes(f"{stage_key}/{ref.path}")
        if sha256_hex(data) != ref.sha256:
            raise StoreError(f"{stage_key}/{ref.path} does not match its recorded sha256")
        return pq.read_table(io.BytesIO(data), columns=columns).cast(_schema(ref.table, columns))

    def read_table(self, manifest: Manifest, table: str, columns: builtins.list[str] | None = None) -> pa.Table:
        """All shards of one table of a committed stage."""
        parts = [self.read_shard(manifest, table, i, columns) for i in range(len(manifest.shards_of(table)))]
        return pa.concat_tables(parts) if parts else _schema(table, columns).empty_table()


def _s3_error_code(err: BaseException) -> str | None:
    """The error code of a botocore ClientError ('NoSuchBucket', '403', ...); None for other errors.
    Credentials that cannot be found at all count as access denied."""
    if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return "AccessDenied"
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return "403" if status == 403 and code not in S3_NOT_WRITABLE else code


def _schema(table: str, columns: list[str] | None) -> pa.Schema:
    schema = TABLES[table]
    return schema if columns is None else pa.schema([schema.field(c) for c in columns])


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temp file next to `path` (to be renamed over it), created the way open()
    creates files: mode 0666 less the process umask (0644 under the usual 022), so a consumer
    running as another user can read what the store publishes. (mkstemp's files are 0600.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise StoreError(f"could not create a temp file next to {path}")


class LocalStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root_uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StoreError(f"key {key!r} escapes the store root")
        return path

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def write_file(self, key: str, path: Path) -> str:
        self._copy_from(path, key)
        return self.uri(key)

    def copy(self, source: str, key: str) -> None:
        self._copy_from(self._path(source), key)

    def _copy_from(self, file: Path, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
        os.close(fd)
        try:
            shutil.copyfile(file, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def open_read(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.exists():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count


class S3Store(ArtifactStore):
    """An s3://bucket/prefix through boto3. client_kwargs go to boto3.client('s3', ...)
    (endpoint_url for MinIO, region_name, aws_access_key_id, ...)."""

    def __init__(self, uri: str, client: Any = None, **client_kwargs: Any):
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = f"{prefix}/" if prefix else ""
        self.root_uri = f"s3://{self.bucket}/{prefix}".rstrip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", **client_kwargs)
        self.client = client

    def write_bytes(self, key: str, data: bytes) -> str:
        # A single PUT is atomic in S3: the object appears whole or not at all.
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        return self.uri(key)

    def write_file(self, key: str, path: Path) -> str:
        self.client.upload_file(str(path), self.bucket, self.prefix + key)
        return self.uri(key)

    def copy(self, source: str, key: str) -> None:
        # boto3's managed copy: one CopyObject, or a multipart copy for objects over its threshold
        self.client.copy({"Bucket": self.bucket, "Key": self.prefix + source}, self.bucket, self.prefix + key)

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter_keys(self, prefix: str) -> Iterable[str]:
        """Keys under prefix; none when the bucket does not exist (as a local store lists a missing
        folder: readers see nothing committed, and writers find out through probe_writable)."""
        from botocore.exceptions import ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        full = self.prefix + prefix.rstrip("/") + "/"
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise

    def list(self, prefix: str) -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def open_read(self, key: str) -> BinaryIO:
        return io.BufferedReader(_S3RangeReader(self.client, self.bucket, self.prefix + key), 1 << 20)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)


class _S3RangeReader(io.RawIOBase):
    """A seekable read-only view of one S3 object: each read is one ranged GET. The first request
    fetches the object's last TAIL bytes, which also gives its size: a Parquet footer is read from
    there without another request."""

    TAIL = 64 * 1024

    def __init__(self, client: Any, bucket: str, key: str):
        self.client, self.bucket, self.object_key, self.pos = client, bucket, key, 0
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{self.TAIL}")
        self.tail = answer["Body"].read()
        content_range = answer.get("ContentRange") or ""
        self.size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else len(self.tail)
        self.tail_start = self.size - len(self.tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.size, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        if self.pos >= self.tail_start:  # already fetched
            body = self.tail[self.pos - self.tail_start:end - self.tail_start]
        else:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key,
                                          Range=f"bytes={self.pos}-{end - 1}")["Body"].read()
        buffer[: len(body)] = body
        self.pos += len(body)
        return len(body)


def open_store(uri: str, **s3_client_kwargs: Any) -> ArtifactStore:
    if uri.startswith("s3://"):
        return S3Store(uri, **s3_client_kwargs)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return LocalStore(uri)


def safe_segment(value: str) -> str:
    """A run id or dag id as one path segment (Airflow run ids hold ':' and '+'); never '', '.' or
    '..' (those get a leading '_'). Several values may give the same segment: a run's folder is
    `run_segment`, which no two run ids share."""
    segment = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    return f"_{segment}" if segment in ("", ".", "..") else segment


# Airflow's own run ids, `<run type>__<run_after.isoformat()>[_<8 random letters or digits>]`: their
# folder is the id with ':' and '+' as '_' (the fixed places of the timestamp, so it maps back).
_AIRFLOW_RUN_ID = re.compile(
    r"[a-z][a-z_]*__\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+\d\d:\d\d(_[A-Za-z0-9]{8})?")
_AIRFLOW_RUN_FOLDER = re.compile(
    r"[a-z][a-z_]*__\d{4}-\d\d-\d\dT\d\d_\d\d_\d\d(\.\d{1,6})?_\d\d_\d\d(_[A-Za-z0-9]{8})?")
_PLAIN_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def run_segment(run_id: str) -> str:
    """The run's folder name: one path segment that no other run id gets.

    - Airflow's own ids (`manual__2026-11-28T19:28:29.682375+00:00`): ':' and '+' become '_'
      (`manual__2026-11-28T19_28_29.682375_00_00`);
    - ids of letters, digits, '.', '_' and '-' that start with a letter or digit and do not look
      like the folder of an Airflow id: the id itself;
    - any other id (`.`, `..`, empty, `_ledger`, `a:b`, one with '/' or spaces, or shaped like an
      Airflow id's folder): its characters as above, then '~' and 16 hex digits of its sha256
      (`..` -> `_..~<hash>`), so it never names another run's folder, the DAG's folder or the
      DAG's own `_ledger`, `_neardup`, `_figures`.

    The three kinds never meet: only the third holds '~', and only the first is shaped like an
    Airflow id's folder; within each, different ids give different folders."""
    if _AIRFLOW_RUN_ID.fullmatch(run_id):
        return run_id.replace(":", "_").replace("+", "_")
    if _PLAIN_RUN_ID.fullmatch(run_id) and not _AIRFLOW_RUN_FOLDER.fullmatch(run_id):
        return run_id
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:120]
    return f"{'_' if not readable[:1].isalnum() else ''}{readable}~{sha256_hex(run_id.encode())[:16]}"


def run_prefix(run: RunRef) -> str:
    """The key prefix under which one run's stages live: `<dag id>/<run_segment(run id)>`."""
    return f"{safe_segment(run.dag_id)}/{run_segment(run.run_id)}"


# Rows per Parquet row group: a reader pages through a table one row group at a time (the Dataset view).
ROW_GROUP_ROWS = 10_000


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as one zstd-compressed Parquet file in memory (what every writer of the store uses), in
    row groups of ROW_GROUP_ROWS rows so that a page of it can be read alone."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()
