"""What keeps a run folder to itself: stage names that are identifiers, paths that
stay inside the folder, and a lock held by the one process working on it.

Everything a run writes or deletes under its folder is named by `run_path`, which
resolves the path (symlinks and `..` included) and refuses one that ends up outside
the folder: a hostile `config.yaml` or `latest.json` from a shared disk cannot point
the run at another folder. No heavy imports here: the config module uses it.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dream3d.errors import UserError

STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""A stage name: 1-32 of a-z, 0-9, '_' and '-', starting with a letter or a digit."""
STAGE_NAME_RULE = "1-32 of a-z, 0-9, _ and -, starting with a letter or digit"
CHECKPOINT_FILE = re.compile(r"step-(\d{6,})\.(safetensors|json)")
"""The files `save_checkpoint` writes into a stage folder (and the only ones its clean-up deletes)."""
LOCK_NAME = ".lock"


def check_stage_name(name: object, key: str) -> str:
    """`name` if it is a valid stage name, else a UserError naming the config `key`."""
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
        raise UserError(f"config key '{key}': {_short(name)} is not a stage name ({STAGE_NAME_RULE})")
    return name


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_path(run_dir: Path, *parts: str) -> Path:
    """`run_dir / parts...`, refused (UserError) unless it resolves to a path inside `run_dir`."""
    run_dir = Path(run_dir)
    path = run_dir.joinpath(*parts)
    root = run_dir.resolve()
    resolved = path.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise UserError(f"refusing the path {_short(str(path), 120)}: it leads outside the run folder {run_dir}")
    return path


def stage_dir(run_dir: Path, name: str) -> Path:
    """ckpt/<name>/ of a stage: a valid stage name inside the run folder."""
    check_stage_name(name, "stages.*.name")
    return run_path(run_dir, "ckpt", name)


def preview_path(run_dir: Path, name: str, step: int) -> Path:
    check_stage_name(name, "stages.*.name")
    return run_path(run_dir, "previews", f"{name}-step-{step:06d}.png")


# ---------------------------------------------------------------- the run lock

_HELD: dict[str, list] = {}  # realpath -> [pid, thread id, depth]
_HELD_GUARD = threading.Lock()


def lock_holder(run_dir: Path) -> str:
    """Who holds the lock, as its file says ('' when it says nothing)."""
    try:
        fields = dict(line.split("=", 1) for line in (Path(run_dir) / LOCK_NAME).read_text().splitlines() if "=" in line)
    except (OSError, ValueError):
        return ""
    if not fields.get("pid"):
        return ""
    return f"pid {fields.get('pid')} on {fields.get('host', '?')} since {fields.get('since', '?')}"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock (flock, exclusive, non-blocking) while the block runs. Another process
    holding it is a UserError that says who; the OS releases it when its holder dies, however
    it dies. The same thread may enter again (a batch running `generate` in-process); another
    thread or a forked child of the holder is refused like another process."""
    import fcntl  # POSIX; imported here so that reading configs needs nothing of it

    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    me = (os.getpid(), threading.get_ident())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and (held[0], held[1]) == me:
            held[2] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key][2] -= 1
        return
    with _HELD_GUARD:
        if held is not None and held[0] == me[0]:  # another thread of this process
            raise UserError(f"{run_dir} is in use by another task of this process (pid {me[0]}); "
                            "one process works on a run at a time")
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot lock the run folder {run_dir}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = lock_holder(run_dir) or "a process that has not written its name yet"
        raise UserError(f"{run_dir} is in use by another dream3d process ({who}); one process works on a run "
                        "at a time: wait for it to finish or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                      f"since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n").encode())
        with _HELD_GUARD:
            _HELD[key] = [me[0], me[1], 1]
        yield
    finally:
        with _HELD_GUARD:
            if _HELD.get(key, [None, None])[:2] == list(me):
                del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody holds it now
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
