"""Started edgezo processes for the integration tests (federation, cluster): each logs to a file
and all are killed at the end of the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TIMEOUT = 240


class Procs:
    """Started edgezo processes, each logging to a file; all killed at the end of the test. With a
    ``broker`` (a test broker), ``start`` adds ``--broker`` with its address unless told otherwise."""

    def __init__(self, root: Path, broker=None):
        self.root, self.broker, self.procs = root, broker, {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(self, name: str, *args: str, broker: str | None = "default") -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        address = (self.broker.address if self.broker else None) if broker == "default" else broker
        cmd = [sys.executable, "-m", "edgezo", *args, *(["--broker", address] if address else [])]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait(self, *names: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            try:
                code = self.procs[name].wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish in {timeout} s; its log ends:\n{self.log(name)[-3000:]}")
            assert code == 0, f"{name} exited {code}:\n{self.log(name)[-3000:]}"

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
