"""The Makefile's recipes, read with `make -n` (nothing runs): clean-demo has one, and `make venv`
on a GPU host installs under the lock minus the CPU builds, exactly as Dockerfile.gpu does."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str, env: dict | None = None) -> str:
    """`make -n` as a user runs it, even when the suite itself runs under `make test` (a nested make
    would print "Entering directory" lines around the recipe)."""
    env = {k: v for k, v in (env or os.environ).items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, check=True, env=env).stdout


def test_clean_demo_removes_the_demo_output():
    assert _dry_run("clean-demo").split() == ["rm", "-rf", "demo-output"]


def _nvidia_smi(folder, exit_code: int) -> dict:
    """The environment with a stand-in nvidia-smi first on PATH (exit 0: a GPU is listed)."""
    folder.mkdir()
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\necho 'GPU 0: stand-in'\nexit {exit_code}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}")


def test_make_venv_pins_a_gpu_host_like_the_gpu_image(tmp_path):
    venv = tmp_path / "venv"
    gpu = _dry_run("venv", f"VENV={venv}", env=_nvidia_smi(tmp_path / "gpu", 0))
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    [excluded] = re.findall(r"grep -vE '([^']+)' constraints\.txt > constraints-gpu\.txt", dockerfile)
    assert f"grep -vE '{excluded}' constraints.txt > {venv}/constraints-gpu.txt" in gpu
    assert f'-c {venv}/constraints-gpu.txt -e ".[airflow,gpu,dev]"' in gpu
    assert "torch.version.cuda" in gpu and "pip uninstall" not in gpu  # CUDA torchvision/torchaudio match

    cpu = _dry_run("venv", f"VENV={venv}", env=_nvidia_smi(tmp_path / "no-gpu", 1))
    assert '-c constraints.txt -e ".[airflow,cpu,dev]"' in cpu and "pip uninstall" in cpu
