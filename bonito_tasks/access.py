"""Where a run may read and write: the deployment's decision, not the run's.

A deployment lists the locations runs may use (bonito_airflow.access reads them from the
environment or an Airflow Variable); `check_locations` refuses a RunConfig whose `source`,
`store` or `export_s3_uri` lies outside them, naming the setting, the value and what is allowed.

- `source` and `export_s3_uri`: under one of the allowed prefixes, path by path: `/data/docs`
  allows `/data/docs` and `/data/docs/a/b`, not `/data/docs-evil`; `s3://bucket` allows every key
  of that bucket, not `s3://bucket-evil`. A local path is made absolute, `..` resolved, and, where
  the folders exist, symbolic links followed (on both sides), so `/data/docs/../secret` and a link
  out of `/data/docs` are outside. An s3:// URI holding a `.` or `..` segment is refused outright
  (S3 keeps them literally, other S3 servers resolve them).
- `store`: under one of the allowed prefixes the same way, and not inside a DAG's folder of
  another store (no folder named like the DAG below the allowed prefix): every run's folder is
  `<store>/<dag_id>/<run folder>`, so a store `/data/store/bonito_dataset/<run folder>` would
  reach into that run's folder.
- The entry `*` allows any location (a single-user machine, tests; not a shared deployment).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bonito_tasks.config import RunConfig
from bonito_tasks.errors import PermanentFailure

# The bundled sample documents (`make demo`, `make ui`, the tests' runs), allowed as a source by default.
DEMO_SOURCES = (str(Path(__file__).resolve().parents[1] / "tests" / "assets" / "sample_docs"),)


# An entry that allows any location: for a single-user machine or a test, never a shared deployment.
ANYWHERE = "*"


class LocationRefused(PermanentFailure):
    """A run's source, store or export lies outside what the deployment allows."""


class BadLocation(LocationRefused):
    """A location that cannot be compared safely (an s3:// URI with `.`/`..`, no bucket, ...)."""


def location_key(uri: str, resolve_links: bool = True) -> tuple[str, ...]:
    """`uri` as comparable segments: ('s3', bucket, *key segments) or ('file', *absolute path
    segments), or (scheme, netloc, *path segments) for other schemes. BadLocation for an empty
    value, an s3:// URI without a bucket or with a `.` / `..` segment, or a control character."""
    text = uri.strip()
    if not text:
        raise BadLocation("an empty location")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadLocation(f"{uri!r} holds a control character")
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", text)
    if match is None or match.group(1).lower() == "file":
        path = match.group(2) if match else text
        absolute = os.path.abspath(path)  # also resolves '..' and '.'
        if resolve_links:
            absolute = os.path.realpath(absolute)
        return ("file", *[p for p in absolute.split(os.sep) if p])
    scheme, rest = match.group(1).lower(), match.group(2)
    netloc, _, path = rest.partition("/")
    if not netloc:
        raise BadLocation(f"{uri!r} names no bucket or host")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadLocation(f"{uri!r} holds a '.' or '..' segment")
    return (scheme, netloc.lower() if scheme != "s3" else netloc, *parts)


def within(uri: str, prefix: str) -> bool:
    """Whether `uri` is `prefix` or lies under it, segment by segment (see the module doc)."""
    if not _within(location_key(uri, False), location_key(prefix, False)):
        return False
    # A local path must stay inside once links are followed too (a link out of the prefix).
    return location_key(uri)[0] != "file" or _within(location_key(uri), location_key(prefix))


def _within(value: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return value[:len(prefix)] == prefix


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same folder or prefix (trailing '/', '..', links aside)."""
    return location_key(a) == location_key(b)


@dataclass(frozen=True)
class AllowedLocations:
    """What the deployment allows: source prefixes, store roots, export prefixes, each with the
    setting that names it (for the error message)."""

    sources: tuple[str, ...] = ()
    stores: tuple[str, ...] = ()
    exports: tuple[str, ...] = ()
    origin: dict[str, str] = field(default_factory=dict)  # sources/stores/exports -> where they were set

    def check(self, config: RunConfig, dag_id: str | None = None) -> None:
        """LocationRefused naming every setting of `config` outside what is allowed; with `dag_id`,
        also a store inside a folder of that name."""
        problems = []
        problems += _refusals("source", config.source, self.sources, self.origin.get("sources"))
        problems += _refusals("store", config.store, self.stores, self.origin.get("stores"))
        if dag_id and not problems:
            problems += _nested_store(config.store, self.stores, dag_id)
        if config.export_s3_uri:
            problems += _refusals("export_s3_uri", config.export_s3_uri, self.exports, self.origin.get("exports"))
        if problems:
            raise LocationRefused("the run's settings name locations this deployment does not allow (nothing "
                                  "was read or written):\n  " + "\n  ".join(problems))


def _refusals(setting: str, value: str, allowed: tuple[str, ...], origin: str | None) -> list[str]:
    try:
        ok = any(_safe_match(value, a) for a in allowed)
    except BadLocation as bad:
        return [f"{setting}={value!r}: {bad}"]
    if ok:
        return []
    shown = ", ".join(allowed) if allowed else "none"
    kind = {"export_s3_uri": "export"}.get(setting, setting)
    return [f"{setting}={value!r} is not under an allowed {kind} location (allowed: {shown}; set by "
            f"{origin or 'the deployment'})"]


def _nested_store(store: str, allowed: tuple[str, ...], dag_id: str) -> list[str]:
    key = location_key(store, False)
    for prefix in allowed:
        if prefix != ANYWHERE and _safe_match(store, prefix):
            below = key[len(location_key(prefix, False)):]
            if dag_id in below:
                return [f"store={store!r} lies inside a {dag_id!r} folder (of the store "
                        f"{prefix.rstrip('/')}/...): a store there would reach into other runs' folders"]
    return []


def _safe_match(value: str, allowed: str) -> bool:
    if allowed == ANYWHERE:
        location_key(value, False)  # still refuses what cannot be compared safely
        return True
    try:
        location_key(allowed, False)
    except BadLocation:
        return False  # a bad entry of the deployment's list allows nothing
    return within(value, allowed)


def split_list(text: str | None) -> tuple[str, ...]:
    """A comma-separated list (blank entries dropped, order kept, duplicates once)."""
    return tuple(dict.fromkeys(p.strip() for p in (text or "").split(",") if p.strip()))
