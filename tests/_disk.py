"""Test helpers for full disks and killed processes (shared by the reliability tests)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def dead_pid() -> int:
    """The id of a process that has just ended (so none runs under it now)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str):
    """A real tmpfs of `size` (e.g. "1m") at `mount`: a full disk without faking any call. Needs
    the right to mount (root, as in our CI containers); the test is skipped with the reason otherwise."""
    mount.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount"):
        pytest.skip("no mount command here")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(res.stderr or res.stdout).strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
