"""`dream3d batch`: run every entry of some prompt files, each in its own run folder.

The scheduler here is the same for every executor (this process, local worker
processes, Ray): it plans the entries (resolving each one's config with the
presets exactly as `generate` does), claims an entry by taking its lock and
marking it running in the manifest, hands the job to the executor, and records
the outcome. Only this process writes the manifest; workers only write their
run folder.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
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
from dream3d.batch.manifest import EntryLock, EntryRecord, Manifest, now
from dream3d.batch.promptfile import PromptEntry, run_name
from dream3d.batch.progress import BatchProgress
from dream3d.errors import UserError


@dataclass
class BatchOptions:
    out: Path = Path("outputs/batch")
    """The batch folder: batch.json and one run folder per entry."""
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
    spec: dict[str, Any] = field(default_factory=dict)
    """What the id is made from: the entry's fields and the batch-wide --model / --set."""
    job: Job | None = None
    error: str | None = None
    tries: int = 0
    lock: EntryLock | None = None


@dataclass
class BatchResult:
    states: dict[str, str] = field(default_factory=dict)
    """Final state of each entry of this invocation: done, failed or queued (not started)."""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s == "done" for s in self.states.values())


# ---------------------------------------------------------------- planning


def plan(entries: list[PromptEntry], opts: BatchOptions) -> list[Planned]:
    """One Planned per distinct entry; an entry written twice (same fields) runs once."""
    from dream3d import config as config_mod
    from dream3d import presets

    out, seen = [], set()
    for entry in entries:
        spec = entry.spec()
        if opts.model is not None:
            spec["model"] = opts.model
        if opts.overrides:
            spec["overrides"] = list(opts.overrides)
        entry_id = run_name(spec)
        if entry_id in seen:
            continue
        seen.add(entry_id)
        p = Planned(entry, entry_id, spec, error=entry.error)
        if p.error is None:
            try:
                flags = presets.run_flags(entry.prompt, seed=entry.seed, guidance=entry.guidance, steps=entry.steps)
                flags.update(entry.set)
                flags.update({k: v for k, v in (("model", opts.model), ("device", opts.device)) if v is not None})
                cfg = presets.resolve(entry.preset, flags, list(opts.overrides))
                p.job = Job(entry_id, str((opts.out / entry_id).resolve()), config_mod.run_config_to_dict(cfg),
                            total_steps=sum(s.train.steps for s in cfg.stages), evaluate=opts.evaluate)
            except UserError as e:
                p.error = str(e)
        out.append(p)
    return out


def register(manifest: Manifest, planned: list[Planned]) -> set[str]:
    """Add this invocation's new entries to the manifest as queued; returns those done already."""
    with manifest.edit() as m:
        for p in planned:
            if p.id not in m.entries:
                m.entries[p.id] = EntryRecord(p.id, p.entry.prompt, p.entry.source, spec=p.spec,
                                              run_dir=p.id, queued=now())
        return {p.id for p in planned if m.entries[p.id].state == "done"}


# ---------------------------------------------------------------- claiming and recording


class Batch:
    def __init__(self, planned: list[Planned], opts: BatchOptions, executor, progress: BatchProgress,
                 done_at_start: set[str]):
        self.planned, self.opts, self.executor, self.progress = planned, opts, executor, progress
        self.done_at_start = done_at_start
        self.manifest = Manifest(opts.out)
        self.started = now()
        self.result = BatchResult({p.id: "queued" for p in planned})
        self.stop = False

    def claim(self, p: Planned) -> str:
        """'run' (locked and marked running), 'busy' (another process has it), or a final state."""
        lock = EntryLock(self.opts.out, p.id)
        if not lock.try_acquire():
            return "busy"
        with self.manifest.edit() as m:
            rec = m.entries[p.id]
            if rec.state == "done" and run_status(self.opts.out / rec.run_dir) == "done":
                final = "done"
            elif rec.state == "failed" and p.tries == 0 and (rec.finished or "") >= self.started:
                final = "failed"  # another process gave up on it while this one waited
            elif p.error is not None:
                rec.state, rec.error, rec.finished = "failed", p.error, now()
                final = "failed"
            else:
                if rec.history and rec.history[-1].get("outcome") is None:  # its process died mid-run
                    rec.history[-1].update(outcome="lost", error="the batch process stopped during this try")
                rec.state, rec.error, rec.started = "running", None, now()
                rec.attempts += 1
                rec.history.append({"attempt": rec.attempts, "host": socket.gethostname(), "pid": os.getpid(),
                                    "started": rec.started, "ended": None, "outcome": None})
                final = "run"
        if final != "run":
            lock.release()
        else:
            p.lock = lock
            p.tries += 1
        return final

    def record(self, p: Planned, outcome: Outcome) -> str:
        """Write the outcome into the manifest, release the entry; returns its state."""
        if outcome.archive is not None:
            unpack_run(outcome.archive, self.opts.out / p.id)
        with self.manifest.edit() as m:
            rec = m.entries[p.id]
            state = "done" if outcome.ok else "queued" if outcome.interrupted else "failed"
            rec.history[-1].update(ended=now(), outcome=state if state != "queued" else "interrupted",
                                   error=outcome.error, seconds=outcome.seconds, resumed_from=outcome.resumed_from,
                                   worker=f"{outcome.host}:{outcome.pid}")
            rec.state, rec.error = state, outcome.error
            rec.seconds = round((rec.seconds or 0.0) + outcome.seconds, 2)
            rec.timings = outcome.timings or rec.timings
            if state != "queued":
                rec.finished = now()
            if outcome.ok:
                rec.eval = outcome.eval
            elif not outcome.interrupted:
                rec.failures += 1
        if p.lock is not None:
            p.lock.release()
            p.lock = None
        return state

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
            time.sleep(0.5)  # only other processes' entries are left: wait for their locks
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
            reason = p.error or self.manifest.read().entries[p.id].error
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
    planned = plan(entries, opts)
    manifest = Manifest(opts.out)
    already = register(manifest, planned)
    executor = make_executor(opts)  # first: a cluster that cannot be reached stops the batch before any bar
    with BatchProgress(console, len(planned), len(already), enabled=opts.progress) as progress:
        if executor.live_progress:
            executor.make_callbacks = progress.callbacks
        batch = Batch(planned, opts, executor, progress, already)
        try:
            result = batch.run()
        except KeyboardInterrupt:
            batch.result.interrupted = True
            result = batch.result
        finally:
            executor.close()
            for p in planned:  # an entry still locked here never got its outcome: leave it to be resumed
                if p.lock is not None:
                    p.lock.release()
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
    """The manifest records of these entries, for the closing table."""
    entries = Manifest(out).read().entries
    return [vars(entries[i]) for i in ids if i in entries]
