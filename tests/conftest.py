"""Shared fixtures: configuration files, socat pty pairs, kemon subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# `pki` and `broker` (a real TLS Mosquitto); `postgres` and `pg_url` (a real PostgreSQL)
pytest_plugins = ["tests.brokers", "tests.pg"]

ROOT = Path(__file__).resolve().parent.parent
UNIT = "91320100MA1ABCDE0C"     # a valid unified social credit code (GB 32100 check character)


def kemon_cmd(*args: str) -> list[str]:
    """The kemon command run from this checkout's interpreter."""
    return [sys.executable, "-m", "kemon", *args]


def run_kemon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kemon_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a gateway configuration (TOML text) and return its path."""

    def write(text: str, name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A connected pair of serial devices (socat pseudo-terminals)."""
    if shutil.which("socat") is None:
        pytest.fail("socat is required (make test installs it)")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not (os.path.exists(a) and os.path.exists(b)):
            if time.monotonic() > deadline:
                pytest.fail("socat did not create the pty pair")
            time.sleep(0.02)
        yield a, b
    finally:
        proc.terminate()
        proc.wait(timeout=5)
