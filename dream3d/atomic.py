"""Atomic file writes: a failed or killed write never leaves a half file or destroys an earlier one.

Each file is written to a temporary file in the same folder (so the final
`os.replace` is a rename on one file system, atomic on POSIX and Windows) and
only moved over the destination once every file of its group was written
(`FileGroup`). Temporary names carry the writer's process id:
`.<stem>.<pid>-<random>.tmp<suffix>`, e.g. `.mesh.4242-k2j1x0ab.tmp.glb`.

A group of several files is moved in one short step: its list of renames is
written first (`.commit.<pid>-<random>.json`), then the files are renamed,
then the list is removed; SIGINT / SIGTERM wait until the renames are done. A
process killed during the renames (SIGKILL, power loss) leaves that list behind,
and `recover_folder` (run at the next run or export of a run folder) finishes
the renames, so the group ends up wholly new. It also removes temporary files
whose writer no longer runs.

A full disk (ENOSPC, or a disk quota) is reported as `DiskFull`, a `UserError`
naming the folder and about how much space the write needed; its temporary
files are removed and the destinations keep their earlier contents.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from dream3d.errors import UserError

TEMP_RE = re.compile(r"^\..*\.tmp(\.[A-Za-z0-9]+)?$")  # also the names earlier versions used
_TEMP_PID_RE = re.compile(r"\.(\d+)-[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")
JOURNAL_RE = re.compile(r"^\.commit\.(\d+)-[A-Za-z0-9_]+\.json$")
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "os error 28)", "os error 122)", "storagefull")


# ---------------------------------------------------------------- full disks
def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def is_disk_full(error: BaseException) -> bool:
    """True for an error that says the disk (or the user's quota) is full: an OSError with
    ENOSPC / EDQUOT, or an error from a library (safetensors, ffmpeg) whose text says so."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    text = str(error).lower()
    return any(t in text for t in _FULL_TEXTS)


def free_bytes(folder: Path) -> int | None:
    """Bytes the current user may still write in `folder`'s file system (None if unknown)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class DiskFull(UserError):
    """The disk filled up (or would have): one line naming the folder and the space needed."""

    def __init__(self, folder: Path, needed: int, free: int | None, what: str = "writing", at_least: bool = False,
                 note: str = ""):
        self.folder, self.needed, self.free = Path(folder), int(needed), free
        amount = f"more than {human_bytes(needed)}" if at_least else f"about {human_bytes(needed)}"
        left = "" if free is None else f" and {human_bytes(free)} is free"
        super().__init__(f"the disk is full: {what} in {folder} needs {amount}{left}{note}")


def ensure_space(folder: Path, needed: int, what: str = "writing", note: str = "") -> None:
    """Raise DiskFull before writing when `folder` has less than `needed` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise DiskFull(folder, needed, free, what, note=note)


# ---------------------------------------------------------------- temporary names
def _temp_path(path: Path) -> Path:
    # Keep the suffix: ffmpeg and pillow pick the container from it.
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM that arrive inside the block take effect when it ends (main thread only:
    elsewhere Python cannot install handlers, and the block runs unprotected)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, object]] = []
    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum, frame in pending:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:  # the default action (end the process), now that the files are in place
                os.kill(os.getpid(), signum)


class FileGroup:
    """Files written under temporary names and moved into place together by `commit()`.

    Use as a context manager: whatever was not committed when the block ends is deleted,
    and the destinations keep their earlier contents. `what` and `note` word a DiskFull
    error ("the export", "; the files of the earlier export were kept")."""

    def __init__(self, folder: Path, what: str = "writing", note: str = ""):
        self.folder, self.what, self.note = Path(folder), what, note
        self._temps: dict[Path, Path] = {}  # destination -> temporary file, in commit order

    def __enter__(self) -> FileGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    # ------------------------------------------------------------ staging
    def temp(self, dest: Path) -> Path:
        """A new empty temporary file for `dest` (later calls for the same dest replace it)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = self._temps.pop(dest, None)
        if old is not None:
            old.unlink(missing_ok=True)
        try:
            self._temps[dest] = _temp_path(dest)
        except OSError as e:
            if is_disk_full(e):
                raise self.disk_full(0, at_least=True) from None
            raise
        return self._temps[dest]

    def ensure(self, more: int) -> None:
        """Raise DiskFull now, before writing, when `more` bytes are not free (files about to be staged)."""
        free = free_bytes(self.folder)
        if free is not None and free < more:
            staged = self.staged_bytes()
            raise DiskFull(self.folder, staged + more, free + staged, self.what, note=self.note)

    def write(self, dest: Path, data: bytes) -> None:
        """Stage `data` as the new contents of `dest`."""
        self.stage(dest, lambda tmp: _write_file(tmp, data), expected=len(data))

    def stage(self, dest: Path, writer: Callable[[Path], None], expected: int | None = None) -> None:
        """Stage `dest` by calling `writer(temporary_path)`; `expected` (bytes, when known) is
        checked against the free space first. A full disk raises DiskFull."""
        staged = self.staged_bytes()
        if expected is not None:
            self.ensure(expected)
        tmp = self.temp(dest)
        try:
            writer(tmp)
        except Exception as e:
            if is_disk_full(e):
                if expected is None:
                    raise self.disk_full(self.staged_bytes(), at_least=True) from None
                raise self.disk_full(staged + expected) from None
            raise

    def staged_bytes(self) -> int:
        return sum(_size(t) for t in self._temps.values())

    def disk_full(self, needed: int, at_least: bool = False) -> DiskFull:
        """A DiskFull for this group; the free space counts what its temporary files hold."""
        free = free_bytes(self.folder)
        free = None if free is None else free + self.staged_bytes()
        return DiskFull(self.folder, needed, free, self.what, at_least=at_least, note=self.note)

    # ------------------------------------------------------------ commit
    def commit(self) -> list[Path]:
        """Move every staged file over its destination, in staging order (stage the file that
        references the others last); returns the destinations."""
        for dest, tmp in self._temps.items():
            if _size(tmp) == 0:
                raise OSError(f"nothing was written for {dest}")
        pairs = list(self._temps.items())
        journal = self._write_journal(pairs) if len(pairs) > 1 else None
        with _signals_held():
            for dest, tmp in pairs:
                os.replace(tmp, dest)
                del self._temps[dest]
            if journal is not None:
                journal.unlink(missing_ok=True)
        return [dest for dest, _ in pairs]

    def _write_journal(self, pairs: list[tuple[Path, Path]]) -> Path | None:
        """The list of renames, so that a kill half-way through them can be finished later.
        Only for groups inside one folder (the run folder's files)."""
        if any(dest.parent != self.folder or tmp.parent != self.folder for dest, tmp in pairs):
            return None
        fd, name = tempfile.mkstemp(prefix=f".commit.{os.getpid()}-", suffix=".json", dir=self.folder)
        os.close(fd)
        journal = Path(name)
        body = json.dumps({"pid": os.getpid(), "renames": [[tmp.name, dest.name] for dest, tmp in pairs]}).encode()
        try:
            with atomic_paths([journal]) as (tmp,):
                _write_file(tmp, body)
        except BaseException:
            journal.unlink(missing_ok=True)
            raise
        return journal

    def discard(self) -> None:
        for tmp in self._temps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._temps.clear()


# ---------------------------------------------------------------- the old helpers, on FileGroup
@contextlib.contextmanager
def atomic_paths(paths: Sequence[Path], what: str = "writing", note: str = "") -> Iterator[list[Path]]:
    """Yield temporary paths, one per destination; on a clean exit move each over
    its destination in the given order (put the file that references the others
    last), on an exception delete them and leave the destinations untouched.
    A full disk inside the block raises DiskFull."""
    paths = [Path(p) for p in paths]
    folder = paths[0].parent if paths else Path(".")
    with FileGroup(folder, what, note) as group:
        temps = [group.temp(p) for p in paths]
        try:
            yield list(temps)
        except Exception as e:
            if is_disk_full(e) and not isinstance(e, DiskFull):
                raise group.disk_full(group.staged_bytes(), at_least=True) from None
            raise
        group.commit()


def write_bytes_atomic(files: dict[Path, bytes], what: str = "writing", note: str = "") -> list[Path]:
    """Write a group of files atomically (in insertion order); returns their paths."""
    paths = [Path(p) for p in files]
    if not paths:
        return []
    with FileGroup(paths[0].parent, what, note) as group:
        for p, data in zip(paths, files.values()):
            group.write(p, data)
        group.commit()
    return paths


def write_text_atomic(path: Path, text: str) -> Path:
    """One text file, replaced atomically."""
    return write_bytes_atomic({Path(path): text.encode()}, what=f"writing {Path(path).name}")[0]


# ---------------------------------------------------------------- recovery
def _running(pid: int) -> bool:
    """True when another process with this id runs on this machine."""
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _finish_journal(journal: Path) -> list[str]:
    """Finish the renames a killed commit listed; names outside the folder or not temporary are ignored."""
    done = []
    try:
        data = json.loads(journal.read_text())
        renames = [(str(t), str(d)) for t, d in data["renames"]]
    except (OSError, ValueError, KeyError, TypeError):
        renames = []  # unreadable: its temporary files are removed as leftovers
    for tmp_name, dest_name in renames:
        if "/" in tmp_name + dest_name or "\\" in tmp_name + dest_name or dest_name.startswith("."):
            continue
        if not TEMP_RE.match(tmp_name):
            continue
        tmp = journal.parent / tmp_name
        if tmp.is_file() and not tmp.is_symlink():
            os.replace(tmp, journal.parent / dest_name)
            done.append(dest_name)
    journal.unlink(missing_ok=True)
    return done


def recover_folder(folder: Path) -> dict[str, list[str]]:
    """Finish the renames of commits that were killed half way, then delete temporary
    files whose writing process no longer runs (on this machine). Returns
    {"finished": destination names, "removed": temporary file names}."""
    folder = Path(folder)
    out: dict[str, list[str]] = {"finished": [], "removed": []}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for p in entries:
        m = JOURNAL_RE.match(p.name)
        if m and p.is_file() and not _running(int(m.group(1))):
            out["finished"] += _finish_journal(p)
    for p in entries:
        if not TEMP_RE.match(p.name) or not p.exists() or p.is_dir():
            continue
        m = _TEMP_PID_RE.search(p.name)
        if m and _running(int(m.group(1))):
            continue  # another process is writing it right now
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            out["removed"].append(p.name)
    return out
