"""A batch folder's record of its entries: `EntryRecord`, and `batch.json`, its readable export.

The record itself lives in SQLite (`batch.db`, see store.py); `batch.json` is
written from it at the end of `dream3d batch` and by `dream3d batch status`, and a
folder that has only a `batch.json` (an earlier dream3d kept its state there) is
imported from it on first use. Both files may come from a shared disk, so
`parse_manifest` checks every field's type and refuses a folder name that is not
a plain name, with one line naming the problem.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dream3d.errors import UserError

MANIFEST = "batch.json"
FORMAT_VERSION = 2
"""1: the state itself (dream3d before SQLite); 2: an export of batch.db."""
STATES = ("queued", "running", "done", "failed")
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""An entry id / run folder: one plain name inside the batch folder."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class EntryRecord:
    """One entry of a batch folder (a row of batch.db, an item of batch.json)."""

    id: str
    """Name of the entry; also its run folder under the batch folder."""
    prompt: str
    """The text prompt."""
    source: str
    """`file:line` where the entry was last seen, as the file was named on the command line."""
    spec: dict[str, Any] = field(default_factory=dict)
    """The entry's fields (seed, preset, guidance, steps, set; a malformed entry's error)."""
    file: str = ""
    """The prompt file's resolved path: with `occurrence` and `spec`, the entry's identity."""
    line: int | None = None
    """1-based line in that file."""
    occurrence: int = 0
    """Which entry of that file with these same settings this is (0: the first)."""
    state: str = "queued"
    """queued, running, done or failed."""
    error: str | None = None
    """Why the last try failed (one line)."""
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
    claim: dict[str, Any] | None = None
    """While running: the claimant (host, pid, since) and whether it is still alive."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- reading batch.json defensively

_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "source": (str,), "spec": (dict,), "file": (str,), "line": (int, type(None)),
    "occurrence": (int,), "state": (str,), "error": (str, type(None)), "run_dir": (str, type(None)),
    "attempts": (int,), "failures": (int,), "queued": (str, type(None)), "started": (str, type(None)),
    "finished": (str, type(None)), "seconds": (int, float, type(None)), "timings": (dict,),
    "eval": (dict, type(None)), "history": (list,), "claim": (dict, type(None)),
}


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def check_record(data: Any) -> EntryRecord:
    """An EntryRecord from one item of batch.json; ValueError naming the first bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"an entry must be a mapping, got {describe(data)}")
    entry_id = data.get("id")
    if not isinstance(entry_id, str) or not FOLDER_NAME.fullmatch(entry_id):
        raise ValueError(f"'id' must be a plain folder name, got {describe(entry_id)}")
    for key, types in _TYPES.items():
        if key in data and (not isinstance(data[key], types) or isinstance(data[key], bool)):
            raise ValueError(f"entry '{entry_id}': '{key}' has the wrong type ({describe(data[key])})")
    if "prompt" not in data:
        raise ValueError(f"entry '{entry_id}' has no 'prompt'")
    if data.get("state", "queued") not in STATES:
        raise ValueError(f"entry '{entry_id}': unknown state {describe(data['state'])}")
    run_dir = data.get("run_dir") or entry_id
    if not FOLDER_NAME.fullmatch(run_dir):
        raise ValueError(f"entry '{entry_id}': 'run_dir' must be a plain folder name, got {describe(run_dir)}")
    if any(not isinstance(h, dict) for h in data.get("history", [])):
        raise ValueError(f"entry '{entry_id}': 'history' must be a list of mappings")
    names = {f.name for f in dataclasses.fields(EntryRecord)}
    rec = EntryRecord(**{"source": "", **{k: v for k, v in data.items() if k in names}})
    rec.run_dir = run_dir
    if not rec.file:  # version 1: the file is the part of `source` before the line number
        rec.file, _, line = rec.source.rpartition(":")
        rec.line = int(line) if line.isdigit() else None
        rec.file = rec.file or rec.source
    return rec


def parse_manifest(text: str, path: Path) -> list[EntryRecord]:
    """The entries of a batch.json text, in order; a UserError of one line for any problem."""
    hint = "move it away to start afresh"
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path} is not a batch record (not JSON: {e}); {hint}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise UserError(f"{path} is not a batch record (a mapping with a list of 'entries' expected, got "
                        f"{describe(data)}); {hint}")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise UserError(f"{path}: unknown batch record version {describe(version)}; {hint}")
    records, ids = [], set()
    for i, item in enumerate(data.get("entries", []), start=1):
        try:
            rec = check_record(item)
        except ValueError as e:
            raise UserError(f"{path}: entry {i}: {e}; {hint}") from None
        if rec.id in ids:
            raise UserError(f"{path}: entry {i}: the id '{rec.id}' appears twice; {hint}")
        ids.add(rec.id)
        records.append(rec)
    return records


def read_records(folder: Path) -> list[dict[str, Any]]:
    """A batch folder's entries as plain dicts (the export's items), for readers such
    as the gallery: from batch.db when there is one, else batch.json; never raises for
    a broken or foreign file (it warns in one line and gives what it could read)."""
    from dream3d.batch.store import DB_NAME, read_db

    folder = Path(folder)
    if (folder / DB_NAME).is_file():
        try:
            return [r.to_dict() for r in read_db(folder)]
        except UserError as e:
            warnings.warn(f"{e}; reading {MANIFEST} instead", stacklevel=2)
    path = folder / MANIFEST
    if not path.is_file():
        return []
    try:
        return [r.to_dict() for r in parse_manifest(path.read_text(encoding="utf-8", errors="replace"), path)]
    except (UserError, OSError) as e:
        warnings.warn(f"{e}; its batch entries are left out", stacklevel=2)
        return []
