"""The vLLM engine's compile caches: one folder per worker, healed once after a killed start.

vLLM compiles the model at its first start on a worker (torch inductor's C++ or Triton kernels,
vLLM's own torch.compile cache) and later starts load what it wrote. A start killed while it was
writing (SIGKILL, out-of-memory kill, a worker restart) can leave a truncated entry (a 0-byte
`.so`) that every later start on that worker trips over, so Airflow's retries cannot fix it.
`start_with_healing` removes such entries (logging each one) before a start, and when a start
fails on one all the same, removes it once and starts again (where the engine compiles in other
processes; else the task's retry does); a second failure is raised with its cause.

The caches live under `$BONITO_COMPILE_CACHE_DIR` (default `~/.cache/bonito-etl/compile`):
`inductor/` (TORCHINDUCTOR_CACHE_DIR), `vllm/` (VLLM_CACHE_ROOT) and `triton/` (TRITON_CACHE_DIR).
torch keeps its precompiled C++ headers in a fixed folder of its own
(`<tmp>/torchinductor_<user>/precompiled_headers`), which is checked too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bonito_tasks.compat import torch_precompiled_header_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_VAR = "BONITO_COMPILE_CACHE_DIR"
CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "VLLM_CACHE_ROOT": "vllm", "TRITON_CACHE_DIR": "triton"}
# A file changed this recently may be one another engine on this worker is writing right now.
RECENT_S = 60
# Error texts that say a cache file could not be loaded; the paths they name under a cache are removed.
_LOAD_ERRORS = re.compile(r"file too short|invalid ELF header|cannot read PCH file|Ran out of input|"
                          r"UnpicklingError|EOFError|truncated", re.IGNORECASE)
_PATH = re.compile(r"/[^\s'\":;,()\[\]]+")
_TRITON_GROUP = "__grp__"  # Triton's cache: one folder per kernel, `__grp__<name>.json` lists its files


class CompileCacheStillFailing(RuntimeError):
    """The start failed again after the broken cache entries were removed: the cause is not (only) the cache."""


class CompileCacheHealed(RuntimeError):
    """The start failed on broken cache entries, now removed; a retry in a fresh process starts clean."""


@dataclass(frozen=True)
class CompileCache:
    root: Path
    folders: tuple[Path, ...]  # every folder a heal looks in


def cache_root(environ: MutableMapping[str, str] = os.environ) -> Path:
    """$BONITO_COMPILE_CACHE_DIR, else ~/.cache/bonito-etl/compile (under $XDG_CACHE_HOME where set)."""
    value = environ.get(ENV_VAR, "").strip()
    if value:
        return Path(value).expanduser().absolute()
    base = environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(base).expanduser().absolute() / "bonito-etl" / "compile"


def use_compile_cache(environ: MutableMapping[str, str] = os.environ) -> CompileCache:
    """Point the inductor, vLLM and Triton caches of this process and of the engine's worker
    processes (they inherit the environment) at folders under the cache root."""
    root = cache_root(environ)
    folders = []
    for var, name in CACHE_ENV.items():
        environ[var] = str(root / name)
        folders.append(root / name)
    pch = torch_precompiled_header_dir()
    return CompileCache(root, tuple(folders) + ((pch,) if pch else ()))


def _elf_complete(head: bytes, size: int) -> bool:
    """The ELF header is whole and its program and section header tables lie inside the file
    (the section table is at the end, so a truncated file fails this)."""
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return False
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit
        if len(head) < 64:
            return False
        phoff, shoff = struct.unpack_from(order + "QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x36)
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x2A)
    return phoff + phnum * phentsize <= size and shoff + shnum * shentsize <= size


# torch inductor's cache entries without a suffix that are pickles (other binary entries, such as
# vLLM's compiled artifacts, are never judged by their bytes).
_PICKLE_FOLDERS = {"fxgraph", "aotautograd"}


def _is_pickle(path: Path) -> bool:
    return path.suffix in (".pkl", ".pickle") or (
        path.suffix == "" and any(part in _PICKLE_FOLDERS for part in path.parent.parts))


def broken_reason(path: Path) -> str | None:
    """Why a cache file cannot be what it claims to be (truncated or empty), or None."""
    name, suffix = path.name, path.suffix
    if suffix == ".lock" or name == "__init__.py":
        return None
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with path.open("rb") as f:
        head = f.read(64)
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
    if suffix in (".so", ".cubin"):
        return None if _elf_complete(head, size) else "truncated shared object"
    if suffix == ".gch":
        return None if head.startswith(b"gpch") else "not a precompiled header"
    if _is_pickle(path) and head[:1] == b"\x80" and last != b".":
        return "truncated pickle"  # protocol 2+ pickles start with PROTO and end with STOP (".")
    if suffix in (".json", ".py"):
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if suffix == ".json" else compile(text, str(path), "exec")
        except (UnicodeDecodeError, ValueError, SyntaxError) as err:
            return f"unreadable {suffix[1:]} ({type(err).__name__})"
        if name.startswith(_TRITON_GROUP) and isinstance(data, dict):
            children = data.get("child_paths")
            children = children if isinstance(children, dict) else {}
            missing = sorted(n for n, p in children.items() if not Path(p).exists())
            if missing:
                return f"incomplete Triton group (no {', '.join(missing)})"
    return None


def _entry(path: Path, reason: str) -> tuple[Path, str]:
    """What to remove for a broken file: the file, or for a file of a Triton cache group (a folder
    with a `__grp__*.json` listing its files) the whole group. Triton loads a group whose listed
    files are missing without them; a kernel then fails to launch ("Unknown key: 'cubin'")."""
    folder = path.parent
    if any(child.name.startswith(_TRITON_GROUP) for child in folder.iterdir()):
        return folder, f"Triton cache group: {path.name} {reason}"
    return path, reason


def find_broken(cache: CompileCache, now: float | None = None) -> dict[Path, str]:
    """Broken entries of every cache folder, with the reason. Files changed in the last RECENT_S
    seconds are left alone: another engine on this worker may be writing them."""
    now = time.time() if now is None else now
    found = {}
    for folder in cache.folders:
        if not folder.is_dir():
            continue
        for dirpath, _, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                try:
                    if path.is_symlink() or now - path.stat().st_mtime < RECENT_S:
                        continue
                    reason = broken_reason(path)
                    if reason:
                        entry, why = _entry(path, reason)
                        found[entry] = why
                except OSError:
                    continue  # removed meanwhile, or unreadable: not ours to judge
    return found


def _error_text(err: BaseException | None) -> str:
    texts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        texts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(texts)


def named_in_error(cache: CompileCache, err: BaseException) -> dict[Path, str]:
    """Cache files an error says it could not load (e.g. "ImportError: <path>.so: file too short";
    for "cannot read PCH file", the `<header>.h.gch` of the header the command included)."""
    text = _error_text(err)
    match = _LOAD_ERRORS.search(text)
    if not match:
        return {}
    found = {}
    for raw in _PATH.findall(text):
        path = Path(raw)
        if path.suffix == ".h":
            path = path.with_name(path.name + ".gch")
        if path.is_file() and any(path.is_relative_to(folder) for folder in cache.folders):
            entry, why = _entry(path, f"named in the error ({match.group(0)})")
            found[entry] = why
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_all(broken: dict[Path, str]) -> str:
    for path in broken:
        _remove(path)
    return "; ".join(f"{path} ({reason})" for path, reason in sorted(broken.items()))


def start_with_healing(start: Callable[[], T], cache: CompileCache, retry_here: bool = True) -> T:
    """`start()`, with the compile caches healed: broken entries (a killed start's leftovers) are
    removed before it. When it fails anyway and the caches now hold broken entries (or the error
    names one), those are removed, each one logged, and `start()` runs once more; a second failure
    raises CompileCacheStillFailing from its cause. Without broken entries the first error is raised
    as it is. Never more than two starts.

    `retry_here=False` (the engine compiles in this process): the removal is not followed by a
    second start but by CompileCacheHealed, for a retry in a fresh process. torch remembers a failed
    load in the process that tried it (the CPU build's vector-ISA probe, the loaded kernels); an
    engine started again in that process either failed the same way or, with torch's caches
    cleared, answered a greedy prompt with an empty string where a fresh process answered text."""
    broken = find_broken(cache)
    if broken:
        log.warning("removed %d broken compile-cache entries before the engine start (left by a start that "
                    "was killed while it compiled): %s", len(broken), _remove_all(broken))
    try:
        return start()
    except Exception as err:
        broken = {**find_broken(cache), **named_in_error(cache, err)}
        if not broken:
            raise
        cause = f"{type(err).__name__}: {str(err)[:300]}"
        listing = _remove_all(broken)
        if not retry_here:
            log.warning("engine start failed (%s); removed %d broken compile-cache entries; the next try starts "
                        "in a fresh process: %s", cause, len(broken), listing)
            raise CompileCacheHealed(
                f"the engine start failed on its compile cache under {cache.root}; {len(broken)} broken entries "
                f"were removed (listed in the log). The engine compiles in this process, which keeps the failed "
                f"load, so the retry (a fresh process) starts clean ({cause})."
            ) from err
        log.warning("engine start failed (%s); removed %d broken compile-cache entries, starting again: %s",
                    cause, len(broken), listing)
    try:
        return start()
    except Exception as err:
        raise CompileCacheStillFailing(
            f"the engine failed again after {len(broken)} broken compile-cache entries under {cache.root} "
            f"were removed ({type(err).__name__}: {err}). The cause is not a broken cache entry that could "
            f"be found; if the log names a file under the cache, remove {cache.root} on this worker."
        ) from err
