"""`dream3d batch status DIR [--json]`: a batch folder's record as a table, or as JSON.

It reads batch.db (importing a batch.json of an earlier dream3d on first use) and
writes batch.json, the readable export, on the way.
"""
from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dream3d.batch.manifest import MANIFEST, EntryRecord
from dream3d.batch.store import DB_NAME, BatchStore
from dream3d.errors import UserError

STATE_COLOURS = {"done": "green", "failed": "red", "running": "cyan", "queued": "yellow"}


def load(folder: Path) -> tuple[dict, list[EntryRecord], str | None]:
    """The folder's record (batch.json's content), its entries, and a warning when
    batch.json could not be written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no batch folder at {folder}")
    if not (folder / DB_NAME).is_file() and not (folder / MANIFEST).is_file():
        raise UserError(f"{folder} is not a batch folder (it has no {DB_NAME} or {MANIFEST})")
    with BatchStore(folder) as store:
        data = store.snapshot()
        try:
            store.export(data)
            warning = None
        except OSError as e:
            warning = f"{MANIFEST} not written: {e}"
    return data, [EntryRecord(**e) for e in data["entries"]], warning


def state_label(rec: EntryRecord) -> str:
    if rec.state == "running" and rec.claim is not None and not rec.claim.get("alive"):
        return "running, claimant gone"  # a killed process: the next `dream3d batch` resumes it
    return rec.state


def counts_line(records: list[EntryRecord]) -> str:
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.state] = counts.get(rec.state, 0) + 1
    parts = [f"{counts[s]} {s}" for s in ("done", "failed", "running", "queued") if counts.get(s)]
    return f"{len(records)} entries: " + (", ".join(parts) if parts else "none")


def table(folder: Path, records: list[EntryRecord]) -> Table:
    t = Table(title=escape(f"batch: {folder / DB_NAME}"), title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("entry", no_wrap=True)
    t.add_column("source", overflow="fold")  # as the file was named on the command line
    t.add_column("state", no_wrap=True)
    t.add_column("tries", justify="right", no_wrap=True)
    t.add_column("seconds", justify="right", no_wrap=True)
    t.add_column("error / worker", overflow="fold")
    for rec in records:
        colour = STATE_COLOURS.get(rec.state, "white")
        note = rec.error or ""
        if rec.state == "running" and rec.claim is not None:
            note = f"{rec.claim.get('host')}:{rec.claim.get('pid')} since {rec.claim.get('since')}"
        t.add_row(escape(rec.id), escape(rec.source), f"[{colour}]{escape(state_label(rec))}[/]", str(rec.attempts),
                  "" if rec.seconds is None else f"{rec.seconds:.1f}", escape(note))
    return t


def show(folder: Path, as_json: bool, out: Console, err: Console) -> None:
    data, records, warning = load(folder)
    if warning:
        err.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:  # what batch.json holds
        print(json.dumps(data, indent=1, ensure_ascii=False))
        return
    out.print(table(Path(folder), records))
    out.print(counts_line(records), highlight=False)
