"""`batch.json`, the record of a batch folder, and the locks that let several batch
processes share one folder.

- The manifest is only changed under an exclusive `flock` on `.batch.lock`
  (read, modify, write) and is written atomically, so two processes never lose
  each other's updates and a reader never sees half a file.
- Each entry has its own lock file in `.locks/`; the process that runs an entry
  holds its lock (non-blocking `flock`) for the whole run, so no entry runs twice
  at once. The kernel drops the lock when the process dies, even by SIGKILL, so
  a stale "running" state is recognised by its free lock. Lock files are never
  deleted: removing one while another process waits on it would split the lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dream3d.atomic import write_text_atomic
from dream3d.errors import UserError

MANIFEST = "batch.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class EntryRecord:
    """One entry's line in the manifest."""

    id: str
    """Deterministic name of the entry; also its run folder under the batch folder."""
    prompt: str
    """The text prompt."""
    source: str
    """`file:line` where the entry was written."""
    spec: dict[str, Any] = field(default_factory=dict)
    """The entry's fields (seed, preset, guidance, steps, set)."""
    state: str = "queued"
    """queued, running, done or failed."""
    error: str | None = None
    """Why the last try failed."""
    run_dir: str | None = None
    """Run folder, relative to the batch folder."""
    attempts: int = 0
    """Tries started over all invocations (an interrupted try counts)."""
    failures: int = 0
    """Tries that ended in an error or a lost worker."""
    queued: str | None = None
    started: str | None = None
    """When the last try started."""
    finished: str | None = None
    """When the entry was last done or failed."""
    seconds: float | None = None
    """Wall time of all tries that ran (training, export, evaluation)."""
    timings: dict[str, float] = field(default_factory=dict)
    """The run's own timings from run.json (per stage, export)."""
    eval: dict[str, Any] | None = None
    """Summary of the run's eval.json (object / colour accuracy, R-precision, Janus rate)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One item per try: number, host, pid, started, ended, outcome, resumed_from, error."""

    @classmethod
    def from_dict(cls, data: dict) -> "EntryRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ManifestData:
    entries: dict[str, EntryRecord] = field(default_factory=dict)
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "created": self.created, "updated": self.updated,
                           "entries": [dataclasses.asdict(e) for e in self.entries.values()]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ManifestData":
        data = json.loads(text)
        entries = [EntryRecord.from_dict(e) for e in data.get("entries", [])]
        return cls({e.id: e for e in entries}, data.get("created", now()), data.get("updated", now()))


class Manifest:
    """The batch folder's `batch.json`: read freely, changed only inside `edit()`."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST
        self.lock_path = self.out_dir / ".batch.lock"

    def read(self) -> ManifestData:
        if not self.path.is_file():
            return ManifestData()
        try:
            return ManifestData.from_json(self.path.read_text())
        except (ValueError, TypeError) as e:
            raise UserError(f"{self.path} is not a batch manifest ({e}); move it away to start afresh") from None

    @contextlib.contextmanager
    def edit(self) -> Iterator[ManifestData]:
        """Read, let the caller modify, write atomically, all under the manifest lock."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                data.updated = now()
                write_text_atomic(self.path, data.to_json())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class EntryLock:
    """Exclusive, non-blocking lock on one entry, held while the entry runs."""

    def __init__(self, out_dir: Path, entry_id: str):
        self.path = Path(out_dir) / ".locks" / f"{entry_id}.lock"
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # Who holds it, for a person looking at a stuck batch (the lock itself is the flock).
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
