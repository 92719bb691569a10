"""A batch folder's state in SQLite, `batch.db`: one row per entry, each change one short transaction.

- WAL mode and a busy timeout: several batch processes on one machine (and
  readers such as `batch status` or the gallery) share the file; a state change
  writes one row, so it costs the same at 10 or 10,000 entries. `synchronous=NORMAL`:
  a commit survives the process being killed; after a power cut the last few may be
  lost, which costs nothing but a look into the run folder (job.py sees a finished
  run and returns at once). WAL needs the processes on one machine: on a cluster,
  one driver (`--ray`) keeps the state and workers only write run folders.
- Claims (claims.py): every batch process holds an exclusive `flock` on its own file in
  `.claims/` for as long as it runs; claiming an entry is one `BEGIN IMMEDIATE`
  transaction that checks the row and writes the claimant's token, host and pid
  into it. An entry that is `running` under a claimant whose file is no longer
  locked (the kernel drops the lock when a process dies, even by SIGKILL) belongs
  to nobody: the next claim takes it over, marks the lost try, and the run resumes
  from its checkpoint. So no entry runs in two processes at once.
- `batch.json` is a readable export (manifest.py); a folder that has only a
  `batch.json` is imported into a new `batch.db` on first use.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dream3d.atomic import write_text_atomic
from dream3d.batch.claims import Claimant, claimant_alive
from dream3d.batch.job import Outcome, run_status
from dream3d.batch.manifest import FORMAT_VERSION, MANIFEST, EntryRecord, now, parse_manifest
from dream3d.batch.promptfile import canonical, entry_id, entry_key, one_line
from dream3d.errors import UserError

DB_NAME = "batch.db"
APP_ID = 0x64336462
"""SQLite `application_id` of a dream3d batch database ('d3db')."""
SCHEMA_VERSION = 1
BUSY_S = 60.0
"""How long a transaction waits for another process's before giving up."""

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE entries (
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        key TEXT NOT NULL UNIQUE,
        file TEXT NOT NULL, line INTEGER, occurrence INTEGER NOT NULL, source TEXT NOT NULL,
        prompt TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, error TEXT, run_dir TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
        queued TEXT, started TEXT, finished TEXT, seconds REAL,
        timings TEXT NOT NULL DEFAULT '{}', eval TEXT, history TEXT NOT NULL DEFAULT '[]',
        claim_token TEXT, claim_host TEXT, claim_pid INTEGER, claimed TEXT)""",
)
INSERT = ("INSERT INTO entries (id, key, file, line, occurrence, source, prompt, spec, state, error, run_dir, "
          "attempts, failures, queued, started, finished, seconds, timings, eval, history) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


# ---------------------------------------------------------------- errors


def _user_error(path: Path, e: sqlite3.Error) -> UserError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "locked" in msg or "busy" in msg:
        return UserError(f"{path}: another process kept the batch database locked for over {BUSY_S:.0f} s ({msg})")
    if isinstance(e, sqlite3.OperationalError) and ("full" in msg or "unable to open" in msg or "readonly" in msg
                                                    or "I/O" in msg):
        return UserError(f"{path}: {msg}")
    hint = (f"move it away and the next run takes up {MANIFEST} beside it (its last export)"
            if path.with_name(MANIFEST).is_file() else "move it away to start afresh")
    return UserError(f"{path} is not a readable batch database ({msg}); {hint}")


def _guard(method):
    """SQLite errors of a store method as one line naming the file."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise _user_error(self.path, e) from None
        except json.JSONDecodeError as e:  # a row edited by hand
            raise UserError(f"{self.path}: a row cannot be read ({e})") from None
    return wrapper


def _check_header(db: sqlite3.Connection, path: Path) -> bool:
    """True for a dream3d batch database, False for an empty file; UserError for anything else."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    if app_id != APP_ID:
        if tables or app_id:
            raise UserError(f"{path} is a SQLite file of something else, not a dream3d batch database; move it away")
        return False
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} was written by a newer dream3d (schema {version}); upgrade dream3d")
    return True


# ---------------------------------------------------------------- rows


def _record(row: sqlite3.Row, out: Path, clean: bool = True) -> EntryRecord:
    claim = None
    if row["state"] == "running" and row["claim_token"]:
        claim = {"host": row["claim_host"], "pid": row["claim_pid"], "since": row["claimed"],
                 "alive": claimant_alive(out, row["claim_token"], clean=clean)}
    return EntryRecord(
        id=row["id"], prompt=row["prompt"], source=row["source"], spec=json.loads(row["spec"]), file=row["file"],
        line=row["line"], occurrence=row["occurrence"], state=row["state"], error=row["error"],
        run_dir=row["run_dir"], attempts=row["attempts"], failures=row["failures"], queued=row["queued"],
        started=row["started"], finished=row["finished"], seconds=row["seconds"],
        timings=json.loads(row["timings"]), eval=json.loads(row["eval"]) if row["eval"] else None,
        history=json.loads(row["history"]), claim=claim)


def _import_rows(records: list[EntryRecord]) -> list[tuple]:
    """Rows for the entries of an imported batch.json (keys from file, settings and occurrence)."""
    rows, keys = [], set()
    for rec in records:
        spec = canonical(rec.spec)
        if rec.file and not os.path.isabs(rec.file):  # version 1 named files as the command line did
            rec.file = os.path.realpath(rec.file)
        occurrence = rec.occurrence
        while entry_key(rec.file, occurrence, rec.spec) in keys:
            occurrence += 1
        key = entry_key(rec.file, occurrence, rec.spec)
        keys.add(key)
        history = [dict(h) for h in rec.history]
        rows.append((rec.id, key, rec.file, rec.line, occurrence, rec.source, rec.prompt, spec, rec.state,
                     rec.error, rec.run_dir or rec.id, rec.attempts, rec.failures, rec.queued, rec.started,
                     rec.finished, rec.seconds, json.dumps(rec.timings), json.dumps(rec.eval) if rec.eval else None,
                     json.dumps(history)))
    return rows


# ---------------------------------------------------------------- the store


@contextlib.contextmanager
def _opening(out: Path) -> Iterator[None]:
    """Hold `.batch.db.open` in `out` (a kernel lock, dropped if the holder dies) while a store opens."""
    import fcntl

    with open(out / ".batch.db.open", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class BatchStore:
    """batch.db of one batch folder. `claims=True` for a process that runs entries."""

    def __init__(self, out: Path, claims: bool = False):
        self.out = Path(out)
        self.path = self.out / DB_NAME
        self.claimant: Claimant | None = None
        self.db: sqlite3.Connection | None = None
        try:
            # Switching a new file to WAL takes SQLite's exclusive lock without waiting on the busy
            # timeout: two processes opening one folder at the same moment take turns here instead.
            with _opening(self.out):
                self.db = sqlite3.connect(self.path, timeout=BUSY_S, isolation_level=None)
                self.db.row_factory = sqlite3.Row
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._init()
        except sqlite3.Error as e:
            self.close()
            raise _user_error(self.path, e) from None
        except OSError as e:  # the folder cannot hold the opening lock (missing, read-only, full)
            self.close()
            raise UserError(f"{self.path}: cannot open the batch database ({e.strerror or e})") from None
        except BaseException:
            self.close()
            raise
        if claims:
            self.claimant = Claimant(self.out)

    def __enter__(self) -> "BatchStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.claimant is not None:
            self.claimant.close()
            self.claimant = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (other processes' wait up to BUSY_S)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back itself (a full disk)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _init(self) -> None:
        with self._write() as db:
            if _check_header(db, self.path):
                return
            for statement in SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APP_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("INSERT INTO meta VALUES ('created', ?)", (now(),))
            legacy = self.out / MANIFEST
            if legacy.is_file():  # the state of an earlier dream3d (or an export of a lost batch.db)
                try:
                    text = legacy.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise UserError(f"cannot read {legacy} to import it: {e}") from None
                db.executemany(INSERT, _import_rows(parse_manifest(text, legacy)))
                db.execute("INSERT INTO meta VALUES ('imported', ?)", (now(),))

    def _row(self, entry_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise UserError(f"{self.path}: entry '{entry_id}' is missing (was the database replaced?)")
        return row

    # ------------------------------------------------------------ entries of an invocation

    @_guard
    def register(self, planned: list) -> set[str]:
        """Add an invocation's entries (runner.Planned: key, id, entry, spec, occurrence,
        error) that are new, as queued (a malformed one as failed, with its reason);
        sets each one's `id` to its row's; returns the ids that are done already."""
        stamp, done = now(), set()
        with self._write() as db:
            known = {r["key"]: r for r in db.execute("SELECT key, id, state, line, source FROM entries")}
            taken = {r["id"] for r in known.values()}
            new, moved = [], []
            for p in planned:
                row = known.get(p.key)
                if row is not None:
                    p.id = row["id"]
                    if row["state"] == "done":
                        done.add(p.id)
                    if (row["line"], row["source"]) != (p.entry.line, p.entry.source):
                        moved.append((p.entry.line, p.entry.source, p.id))
                    continue
                digits = 8
                while p.id in taken:  # another key with the same first digits: more of them
                    digits += 4
                    p.id = entry_id(p.spec, p.key, digits)
                taken.add(p.id)
                known[p.key] = {"id": p.id, "state": "queued", "line": p.entry.line, "source": p.entry.source}
                failed = p.entry.error is not None
                new.append((p.id, p.key, p.entry.file, p.entry.line, p.occurrence, p.entry.source, p.entry.prompt,
                            canonical(p.spec), "failed" if failed else "queued", p.entry.error, p.id, 0, 0, stamp,
                            None, stamp if failed else None, None, "{}", None, "[]"))
            db.executemany(INSERT, new)
            db.executemany("UPDATE entries SET line = ?, source = ? WHERE id = ?", moved)
        return done

    @_guard
    def peek(self, entry_id: str) -> tuple[str, str]:
        """(state, run folder) of an entry, without a transaction."""
        row = self._row(entry_id)
        return row["state"], row["run_dir"]

    @_guard
    def claim(self, entry_id: str, tries: int, since: str, error: str | None = None) -> str:
        """In one transaction: 'run' (marked running under this process), 'busy' (a live
        process has it), 'done' (finished, its run folder too) or 'failed' (`error`, or
        another process gave up on it after `since` while this one had not tried it)."""
        assert self.claimant is not None, "open the store with claims=True to claim entries"
        with self._write() as db:
            row = self._row(entry_id)
            token = row["claim_token"]
            if row["state"] == "running" and token != self.claimant.token and claimant_alive(self.out, token):
                return "busy"
            if row["state"] == "done" and run_status(self.out / row["run_dir"]) == "done":
                return "done"
            if row["state"] == "failed" and tries == 0 and (row["finished"] or "") >= since:
                return "failed"
            if error is not None:
                db.execute("UPDATE entries SET state = 'failed', error = ?, finished = ?, claim_token = NULL "
                           "WHERE id = ?", (one_line(error), now(), entry_id))
                return "failed"
            history = json.loads(row["history"])
            if history and history[-1].get("outcome") is None:  # its process died mid-run
                history[-1].update(outcome="lost", error="the batch process stopped during this try")
            started, attempts = now(), row["attempts"] + 1
            history.append({"attempt": attempts, "host": socket.gethostname(), "pid": os.getpid(),
                            "started": started, "ended": None, "outcome": None})
            db.execute("UPDATE entries SET state = 'running', error = NULL, started = ?, attempts = ?, history = ?, "
                       "claim_token = ?, claim_host = ?, claim_pid = ?, claimed = ? WHERE id = ?",
                       (started, attempts, json.dumps(history), self.claimant.token, socket.gethostname(),
                        os.getpid(), started, entry_id))
            return "run"

    @_guard
    def record(self, entry_id: str, outcome: Outcome) -> str:
        """Write a try's outcome and drop the claim; returns the entry's new state."""
        state = "done" if outcome.ok else "queued" if outcome.interrupted else "failed"
        error = one_line(outcome.error) if outcome.error else None
        with self._write() as db:
            row = self._row(entry_id)
            history = json.loads(row["history"])
            if history:
                history[-1].update(ended=now(), outcome=state if state != "queued" else "interrupted", error=error,
                                   seconds=outcome.seconds, resumed_from=outcome.resumed_from,
                                   worker=f"{outcome.host}:{outcome.pid}")
            seconds = round((row["seconds"] or 0.0) + outcome.seconds, 2)
            timings = json.dumps(outcome.timings) if outcome.timings else row["timings"]
            finished = now() if state != "queued" else row["finished"]
            eval_ = json.dumps(outcome.eval) if outcome.ok and outcome.eval is not None else row["eval"]
            failures = row["failures"] + (0 if outcome.ok or outcome.interrupted else 1)
            db.execute("UPDATE entries SET state = ?, error = ?, seconds = ?, timings = ?, finished = ?, eval = ?, "
                       "failures = ?, history = ?, claim_token = NULL, claim_host = NULL, claim_pid = NULL, "
                       "claimed = NULL WHERE id = ?",
                       (state, error, seconds, timings, finished, eval_, failures, json.dumps(history), entry_id))
        return state

    # ------------------------------------------------------------ reading

    @_guard
    def get(self, entry_id: str) -> EntryRecord:
        return _record(self._row(entry_id), self.out)

    @_guard
    def records(self, ids: list[str] | None = None) -> list[EntryRecord]:
        """Every entry in the order they were first registered, or these ids in this order."""
        return self._records(ids)

    def _records(self, ids: list[str] | None = None) -> list[EntryRecord]:
        rows = self.db.execute("SELECT * FROM entries ORDER BY n").fetchall()
        if ids is None:
            return [_record(r, self.out) for r in rows]
        by_id = {r["id"]: r for r in rows}
        return [_record(by_id[i], self.out) for i in ids if i in by_id]

    @_guard
    def snapshot(self) -> dict[str, Any]:
        """The whole record as batch.json holds it (one consistent read)."""
        self.db.execute("BEGIN")
        try:
            created = self.db.execute("SELECT value FROM meta WHERE key = 'created'").fetchone()
            records = [r.to_dict() for r in self._records()]
        finally:
            self.db.execute("COMMIT")
        return {"version": FORMAT_VERSION, "exported": now(), "created": created[0] if created else None,
                "note": f"an export of {DB_NAME}, which holds the batch's state", "entries": records}

    def export(self, data: dict[str, Any] | None = None) -> Path:
        """Write batch.json (from `data`, a snapshot, or a new one)."""
        data = data if data is not None else self.snapshot()
        return write_text_atomic(self.out / MANIFEST, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_db(out: Path) -> list[EntryRecord]:
    """The entries of a folder's batch.db, opened read-only (for the gallery); UserError if unreadable."""
    path = Path(out) / DB_NAME
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    db = None
    try:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_S)
        db.row_factory = sqlite3.Row
        if not _check_header(db, path):
            return []
        return [_record(r, out, clean=False) for r in db.execute("SELECT * FROM entries ORDER BY n")]
    except sqlite3.Error as e:
        raise _user_error(path, e) from None
    except (ValueError, TypeError) as e:  # a row whose JSON columns were edited by hand
        raise UserError(f"{path}: a row cannot be read ({e})") from None
    finally:
        if db is not None:
            db.close()
