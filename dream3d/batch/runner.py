"""`dream3d batch`: run every entry of some prompt files, each in its own run folder.

The scheduler here is the same for every executor (this process, local worker
processes, Ray): it plans the entries (each line of a prompt file its own entry,
named by its file, settings and occurrence), registers them in the folder's
batch.db, and then, entry by entry, resolves its config with the presets exactly
as `generate` does (lazily: 10,000 entries are queued in about a second), claims
it in one transaction, hands the job to the executor, and records the outcome.
Only this process writes the state; workers only write their run folder.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from dream3d.batch.job import Job, Outcome, run_status
from dream3d.batch.manifest import now
from dream3d.batch.promptfile import PromptEntry, canonical, entry_id, entry_key, one_line
from dream3d.batch.progress import BatchProgress
from dream3d.batch.store import BatchStore
from dream3d.errors import UserError


@dataclass
class BatchOptions:
    out: Path = Path("outputs/batch")
    """The batch folder: batch.db (its state), batch.json (an export) and one run folder per entry."""
    workers: int = 1
    """Local worker processes (1: run in this process)."""
    ray: str | None = None
    """Ray cluster address (auto, ray://host:10001) or 'local' for a Ray instance started here."""
    retries: int = 1
    """Further tries of an entry that failed with an unexpected error or a lost worker."""
    fail_fast: bool = False
    """Start no new entry after one has failed."""
    model: str | None = None
    """Prior for every entry (overrides the files)."""
    device: str | None = None
    """auto, cpu or cuda for every entry."""
    overrides: list[str] = field(default_factory=list)
    """`key=value` config overrides for every entry (win over the files)."""
    evaluate: bool = True
    """Score each finished run with the shipped classifier."""
    progress: bool = True
    """Draw progress bars."""


@dataclass
class Planned:
    """An entry of this invocation with its resolved job (or the reason it cannot run)."""

    entry: PromptEntry
    id: str
    """Its folder name (the store's, once registered)."""
    key: str = ""
    """Its identity: file, settings and occurrence (promptfile.entry_key)."""
    occurrence: int = 0
    """Which entry of its file with the same settings it is (0: the first)."""
    spec: dict[str, Any] = field(default_factory=dict)
    """What the key is made from with the file: the entry's fields and the batch-wide --model / --set."""
    job: Job | None = None
    error: str | None = None
    tries: int = 0


@dataclass
class BatchResult:
    states: dict[str, str] = field(default_factory=dict)
    """Final state of each entry of this invocation: done, failed or queued (not started)."""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s == "done" for s in self.states.values())


# ---------------------------------------------------------------- planning


def plan(entries: list[PromptEntry], opts: BatchOptions, resolve: bool = True) -> list[Planned]:
    """One Planned per entry, every line its own (a line written twice is two entries).
    `resolve`: build each job now (else `prepare` does it when the entry comes up)."""
    out, counts = [], {}
    for entry in entries:
        spec = entry.spec()
        if entry.error is None:
            if opts.model is not None:
                spec["model"] = opts.model
            if opts.overrides:
                spec["overrides"] = list(opts.overrides)
        occurrence = counts.get((entry.file, canonical(spec)), 0)
        counts[(entry.file, canonical(spec))] = occurrence + 1
        key = entry_key(entry.file, occurrence, spec)
        p = Planned(entry, entry_id(spec, key), key, occurrence, spec, error=entry.error)
        if resolve:
            prepare(p, opts)
        out.append(p)
    return out


def prepare(p: Planned, opts: BatchOptions) -> None:
    """Resolve the entry's config as `generate` does: sets `p.job`, or `p.error` (one line)."""
    from dream3d import config as config_mod
    from dream3d import presets

    if p.job is not None or p.error is not None:
        return
    entry = p.entry
    try:
        flags = presets.run_flags(entry.prompt, seed=entry.seed, guidance=entry.guidance, steps=entry.steps)
        flags.update(entry.set)
        flags.update({k: v for k, v in (("model", opts.model), ("device", opts.device)) if v is not None})
        cfg = presets.resolve(entry.preset, flags, list(opts.overrides))
        p.job = Job(p.id, str((opts.out / p.id).resolve()), config_mod.run_config_to_dict(cfg),
                    total_steps=sum(s.train.steps for s in cfg.stages), evaluate=opts.evaluate)
    except UserError as e:
        p.error = one_line(str(e))


# ---------------------------------------------------------------- claiming and recording


class Batch:
    def __init__(self, planned: list[Planned], opts: BatchOptions, executor, progress: BatchProgress,
                 done_at_start: set[str], store: BatchStore):
        self.planned, self.opts, self.executor, self.progress = planned, opts, executor, progress
        self.done_at_start = done_at_start
        self.store = store
        self.started = now()
        self.result = BatchResult({p.id: "queued" for p in planned})
        self.stop = False

    def claim(self, p: Planned) -> str:
        """'run' (marked running under this process), 'busy' (another process has it), or a final state."""
        if p.entry.error is not None:
            return "failed"  # malformed: recorded as failed when it was registered
        if p.job is None and p.error is None:
            state, run_dir = self.store.peek(p.id)
            if state == "done" and run_status(self.opts.out / run_dir) == "done":
                return "done"  # no need to resolve its config
            prepare(p, self.opts)
        final = self.store.claim(p.id, p.tries, self.started, error=p.error)
        if final == "run":
            p.tries += 1
        return final

    def record(self, p: Planned, outcome: Outcome) -> str:
        """Write the outcome into the store, release the entry; returns its state."""
        if outcome.archive is not None:
            unpack_run(outcome.archive, self.opts.out / p.id)
        return self.store.record(p.id, outcome)

    # ---------------------------------------------------------------- the loop

    def run(self) -> BatchResult:
        self.pending: deque[Planned] = deque(self.planned)
        self.deferred: list[Planned] = []
        self.running: dict[str, Planned] = {}
        while self.pending or self.deferred or self.running:
            try:
                self._turn()
            except KeyboardInterrupt:
                if self.stop and self.result.interrupted:
                    raise  # a second Ctrl-C: leave at once, the next run resumes from checkpoints
                self.result.interrupted, self.stop = True, True
                self.progress.print("[yellow]interrupted[/]: finishing the running entries' checkpoints")
                self.executor.cancel()
            if self.stop and not self.running:
                break
        return self.result

    def _turn(self) -> None:
        """Start what can start, then collect what finished."""
        pending, deferred, running = self.pending, self.deferred, self.running
        if not self.stop and not pending and deferred and self.executor.free_slots() > 0:
            pending.extend(deferred)  # try the entries other processes held again
            deferred.clear()
        while pending and not self.stop and self.executor.free_slots() > 0:
            p = pending.popleft()
            state = self.claim(p)
            if state == "busy":
                deferred.append(p)
            elif state == "run":
                running[p.id] = p
                self.executor.submit(p.job)
            else:
                self.finished(p, state, skipped=True)
        if self.stop and not running:
            return
        if self.executor.live_progress is False:
            self.progress.follow(self.executor.running())
        outcomes = self.executor.poll(0.5) if running else []
        if not outcomes and not running and deferred:
            time.sleep(0.5)  # only other processes' entries are left: wait for their claims
        for outcome in outcomes:
            p = running.pop(outcome.id)
            state = self.record(p, outcome)
            self.progress.end_run(p.id)
            if outcome.interrupted:
                self.result.interrupted, self.stop = True, True
            elif state == "failed" and not outcome.permanent and p.tries <= self.opts.retries:
                self.progress.print(f"[yellow]retry[/] {p.id}: {escape(str(outcome.error))}", highlight=False,
                                    soft_wrap=True)
                pending.appendleft(p)  # resumes from the run's last checkpoint
            else:
                self.finished(p, state)

    def finished(self, p: Planned, state: str, skipped: bool = False) -> None:
        self.result.states[p.id] = state
        if state == "failed":
            reason = p.error or self.store.get(p.id).error
            self.progress.print(f"[red]failed[/] {escape(p.entry.source)} {p.id}: {escape(str(reason))}",
                                highlight=False, soft_wrap=True)
            self.stop = self.stop or self.opts.fail_fast
        elif not skipped:
            self.progress.print(f"[green]done[/] {p.id} ({escape(p.entry.source)})", highlight=False, soft_wrap=True)
        if p.id not in self.done_at_start:  # those were counted when the bar was made
            self.progress.entry_finished()


# ---------------------------------------------------------------- the whole command


def make_executor(opts: BatchOptions):
    if opts.ray is not None:
        from dream3d.batch.ray_runner import RayExecutor

        return RayExecutor(opts.ray, opts.out)
    if opts.workers > 1:
        from dream3d.batch.executors import ProcessExecutor

        return ProcessExecutor(opts.workers)
    from dream3d.batch.executors import InProcessExecutor

    return InProcessExecutor()


def run_batch(entries: list[PromptEntry], opts: BatchOptions, console: Console | None = None) -> BatchResult:
    if opts.workers < 1:
        raise UserError(f"--workers must be at least 1, got {opts.workers}")
    if opts.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {opts.retries}")
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the batch folder {opts.out}: {e.strerror}") from None
    console = console or Console(stderr=True)
    planned = plan(entries, opts, resolve=False)
    store = BatchStore(opts.out, claims=True)  # imports a batch.json of an earlier dream3d on first use
    try:
        already = store.register(planned)
        executor = make_executor(opts)  # first: a cluster that cannot be reached stops the batch before any bar
        with BatchProgress(console, len(planned), len(already), enabled=opts.progress) as progress:
            if executor.live_progress:
                executor.make_callbacks = progress.callbacks
            batch = Batch(planned, opts, executor, progress, already, store)
            try:
                result = batch.run()
            except KeyboardInterrupt:
                batch.result.interrupted = True
                result = batch.result
            finally:
                executor.close()
        try:
            store.export()
        except (UserError, OSError) as e:
            console.print(f"[yellow]warning[/]: batch.json not written: {escape(str(e))}", highlight=False,
                          soft_wrap=True)
    finally:
        # An entry still claimed here never got its outcome: closing drops this process's claim
        # lock, so the next batch process sees its claimant gone and resumes it from its checkpoint.
        store.close()
    return result


def unpack_run(archive: bytes, run_dir: Path) -> None:
    """Put a run folder made elsewhere (a tar.gz of it) in place of `run_dir`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary_rows(out: Path, ids: list[str]) -> list[dict[str, Any]]:
    """The records of these entries, for the closing table."""
    with BatchStore(out) as store:
        return [r.to_dict() for r in store.records(ids)]
