"""Who is working on a batch folder: one claim file per batch process, locked while it lives.

Every batch process that runs entries holds an exclusive `flock` on its own file
in `.claims/` (named by host, pid and a random part) for as long as it runs, and
a claimed row of batch.db names that file's token. Whether a claimant still
lives is whether its file is locked: the kernel drops the lock when the process
dies, even by SIGKILL, so a dead claimant is recognised at once and without a
timeout. Nobody ever waits on these files (they are only tested without
blocking), so removing one is safe: its owner removes it when it closes, and
whoever finds one unlocked removes it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import uuid
from pathlib import Path

CLAIMS = ".claims"


class Claimant:
    """This process's claim file, locked for as long as it may hold entries."""

    def __init__(self, out: Path):
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
        self.token = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = Path(out) / CLAIMS / f"{self.token}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for old in self.path.parent.glob("*.lock"):  # files of killed processes: testing removes them
            claimant_alive(out, old.name[:-len(".lock")])
        # Locked before it gets its name, so nobody ever sees the file unlocked while this process lives.
        tmp = self.path.with_name(f".{self.token}.tmp")
        self.fd: int | None = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.rename(tmp, self.path)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # nobody ever waits on this file: removing it is safe
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


TOKEN = re.compile(r"[A-Za-z0-9._-]{1,120}")


def claimant_alive(out: Path, token: str | None, clean: bool = True) -> bool:
    """Whether the process that wrote this claim token still runs (its claim file is locked)."""
    if not token or not TOKEN.fullmatch(token):
        return False
    path = Path(out) / CLAIMS / f"{token}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: never risk running an entry twice
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    else:
        if clean:
            with contextlib.suppress(OSError):
                path.unlink()
        return False
    finally:
        os.close(fd)
