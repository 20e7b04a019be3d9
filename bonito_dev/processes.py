"""Airflow's long-running commands (api-server, scheduler, ...) as processes on this machine: each one
its own process group with its output in a log file, all stopped together. Used by `make ui`
(bonito_dev/ui.py) and by the deployment tests (tests/deployment/stack.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

AIRFLOW = Path(sys.executable).with_name("airflow")
# Every process the Services start, and every process those start, inherits this variable:
# /proc/<pid>/environ finds them even if one leaves its process group.
MARKER = "BONITO_DEPLOYMENT_ID"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (nothing else listens there)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Services:
    """Processes started with `env` (which must hold MARKER): each its own process group (a new
    session, so a terminal's Ctrl-C reaches only the caller) with stdout and stderr in
    <log_dir>/<name>.log."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        """Start `airflow <args>` with the deployment's environment."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([str(AIRFLOW), *args], env=self.env,
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def exited(self) -> dict[str, int]:
        """The processes that ended, with their exit codes."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def assert_running(self) -> None:
        exited = self.exited()
        assert not exited, f"airflow processes exited: {exited}\n{self.tails()}"

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {name} ({self.log_dir / name}.log) -----\n{self.tail(name, lines)}"
                         for name in self.procs)

    def stop(self, grace_s: float = 30) -> list[int]:
        """SIGTERM every process group, SIGKILL the groups still there after `grace_s`. Returns the
        processes carrying this deployment's marker that are still alive 10 s later (for example
        ones that left their group); those are SIGKILLed."""
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10
        while (left := marked_processes(self.env[MARKER])) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def marked_processes(marker: str) -> list[int]:
    """Live processes (zombies have no environment) whose environment holds MARKER=marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                pass
    return found
