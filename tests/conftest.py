"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

import pytest


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture()
def stop_process_group() -> Callable[[subprocess.Popen[bytes]], None]:
    """Stop a process started with ``start_new_session=True``: SIGTERM to its group, SIGKILL after 15 s."""
    return _stop_process_group
