"""The S3 export: complete snapshots under the export prefix and a pointer written last.

S3 has no multi-object commit, so an export never changes files a reader may be reading:

    <export>/snapshots/<run>-<hash>/...   one complete dataset (data/, assets/, sources.jsonl, README.md)
    <export>/_latest.json                 the pointer: {"snapshot": "snapshots/<run>-<hash>", "files": ...}

An export writes every file of the new snapshot first (an append: the night's files, and the
current snapshot's others copied within the bucket), then `_latest.json` in one PUT (atomic on
S3), then deletes the snapshots that are neither the new one nor the one the old pointer named
(that one stays until the next export, so a reader that read the old pointer can finish), and the
files of the older layout (the dataset directly under the prefix). A crash at any point leaves the
pointer naming a complete snapshot; its retry rewrites the same snapshot (the name is a hash of the
files) and then switches the pointer.

Readers: read `_latest.json`, then only the files under the `snapshot` prefix it names (its `files`
lists each with size and sha256); never list the export prefix itself. `read_export` does that.
One exporter per prefix at a time (the DAG runs one run at a time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping

from bonito_tasks.contracts import canonical_json, sha256_hex
from bonito_tasks.publish import files as content
from bonito_tasks.publish.files import Content
from bonito_tasks.publish.hub import PublishError
from bonito_tasks.publish.layout import ASSETS_DIR, CARD_FILE, DATA_DIR, SOURCES_FILE
from bonito_tasks.store import ArtifactStore, safe_segment

logger = logging.getLogger(__name__)

POINTER = "_latest.json"
SNAPSHOTS = "snapshots"
POINTER_FORMAT = 1
LEGACY = (f"{DATA_DIR}/", f"{ASSETS_DIR}/")  # the dataset written directly under the prefix (before pointers)
LEGACY_FILES = (CARD_FILE, SOURCES_FILE)

READ_NOTE = f"""
### Reading the S3 export

This dataset was also exported to S3. The export prefix holds complete snapshots under
`{SNAPSHOTS}/<id>/` and a pointer, `{POINTER}`, written last, that names the current one. Read
`{POINTER}` first, then only the files under the `snapshot` prefix it names (for example
`load_dataset("s3://<bucket>/<prefix>/" + snapshot)`); never list the prefix itself, which may hold
a snapshot still being written.
"""


def snapshot_name(hashes: Mapping[str, str], run_id: str) -> str:
    """`snapshots/<run>-<hash of the files>` (`hashes`: path -> sha256): the same files of the same
    run, the same name."""
    listing = canonical_json(dict(sorted(hashes.items())))
    return f"{SNAPSHOTS}/{safe_segment(run_id)}-{sha256_hex(listing)[:16]}"


def read_pointer(export: ArtifactStore) -> dict | None:
    """The export's `_latest.json`, or None when there is none (nothing exported, or the older layout)."""
    if not export.exists(POINTER):
        return None
    pointer = json.loads(export.read_bytes(POINTER))
    if pointer.get("format") != POINTER_FORMAT or not str(pointer.get("snapshot", "")).startswith(f"{SNAPSHOTS}/"):
        raise PublishError(f"{export.uri(POINTER)} is not a bonito export pointer (format {POINTER_FORMAT})")
    return pointer


def export_files(export: ArtifactStore, files: Mapping[str, Content], run_id: str,
                 carry: ExportFiles | None = None) -> str:
    """Publish `files` (bytes or local files, written one at a time) as the export's current
    snapshot (see the module docstring); returns the snapshot's URI. Readers following the pointer
    see the previous snapshot or this one, whole. With `carry` (an append: the export as it was
    read before), the snapshot also holds every file of the current one that `files` does not
    replace, copied within the store (on S3 server-side: never read here); an append that adds no
    file leaves the export as it is."""
    previous = read_pointer(export)
    carried = carry.carried(files) if carry is not None else {}
    if carry is not None and previous is not None and not files:
        logger.info("nothing new to export: %s stays current", export.uri(previous["snapshot"]))
        return export.uri(previous["snapshot"])
    hashes = {path: content.sha256(data) for path, data in files.items()}
    sizes = {path: content.size(data) for path, data in files.items()}
    hashes |= {path: meta["sha256"] for path, meta in carried.items()}
    sizes |= {path: meta["bytes"] for path, meta in carried.items()}
    snapshot = snapshot_name(hashes, run_id)
    for path in sorted(files):
        export.write_bytes(f"{snapshot}/{path}", content.read(files[path]))
    for path in sorted(carried):
        export.copy(carried[path]["key"], f"{snapshot}/{path}")
    pointer = {
        "format": POINTER_FORMAT,
        "snapshot": snapshot,
        "run_id": run_id,
        "files": {path: {"bytes": sizes[path], "sha256": hashes[path]} for path in sorted(hashes)},
    }
    export.write_bytes(POINTER, json.dumps(pointer, indent=1, sort_keys=True).encode())  # the switch
    keep = {snapshot, previous["snapshot"]} if previous else {snapshot}
    for key in export.list(SNAPSHOTS):
        if "/".join(key.split("/")[:2]) not in keep:
            export.delete(key)
    for key in [k for folder in LEGACY for k in export.list(folder.rstrip("/"))] + list(LEGACY_FILES):
        export.delete(key)  # the older layout; S3 deletes of missing keys are no-ops
    logger.info("exported %d new and %d carried files to %s; %s now names it", len(files), len(carried),
                export.uri(snapshot), export.uri(POINTER))
    return export.uri(snapshot)


def read_export(export: ArtifactStore) -> dict[str, bytes]:
    """The files of the export's current snapshot, as a reader should get them: through the
    pointer, each checked against its sha256. Empty when nothing was exported."""
    pointer = read_pointer(export)
    if pointer is None:
        return {}
    files = {}
    for path, meta in pointer["files"].items():
        data = export.read_bytes(f"{pointer['snapshot']}/{path}")
        if sha256_hex(data) != meta["sha256"]:
            raise PublishError(f"{export.uri(pointer['snapshot'])}/{path} does not match {POINTER}")
        files[path] = data
    return files


class ExportFiles:
    """The dataset files the export holds now (append deduplicates against them): the current
    snapshot's, or the older layout's files directly under the prefix when there is no pointer."""

    def __init__(self, export: ArtifactStore):
        self.export = export
        pointer = read_pointer(export)
        if pointer is not None:
            self._prefix = f"{pointer['snapshot']}/"
            self._files: dict[str, dict] = pointer["files"]
            self.paths = sorted(self._files)
        else:
            self._prefix, self._files = "", {}
            top = [name for name in LEGACY_FILES if export.exists(name)]
            self.paths = sorted(top + [key for folder in LEGACY for key in export.list(folder.rstrip("/"))])

    def read(self, path: str) -> bytes:
        return self.export.read_bytes(self._prefix + path)

    def carried(self, replaced: Collection[str]) -> dict[str, dict]:
        """path -> {key, bytes, sha256} of each file not in `replaced`: from the pointer, or for the
        older layout (no pointer; once) by reading the file."""
        carried = {}
        for path in self.paths:
            if path in replaced:
                continue
            meta = self._files.get(path)
            if meta is None:
                data = self.read(path)
                meta = {"bytes": len(data), "sha256": sha256_hex(data)}
            carried[path] = {"key": self._prefix + path, "bytes": meta["bytes"], "sha256": meta["sha256"]}
        return carried
