"""Batch progress: one overall bar (entries finished / total, ETA) and a bar per running run.

A run in this process reports each step through generate's callbacks; a run in
another process (a local worker, a Ray worker on a shared folder) is followed by
reading the last line of its metrics.jsonl.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from dream3d.batch.job import Job


def last_metrics_row(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # a line being written
    return None


def steps_done(job: Job) -> int:
    """Steps of the job's run so far, over its stages (from the last metrics row)."""
    row = last_metrics_row(Path(job.run_dir) / "metrics.jsonl")
    if not row:
        return 0
    done = 0
    for stage in job.config.get("stages", []):
        if stage["name"] == row.get("stage"):
            return done + int(row.get("step", 0))
        done += int(stage["train"]["steps"])
    return 0


class BatchProgress:
    def __init__(self, console: Console, total: int, already_done: int, enabled: bool = True):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TimeElapsedColumn(), console=console, disable=not enabled,
        )
        self.overall = self.progress.add_task("batch", total=total, completed=already_done)
        self.runs: dict[str, TaskID] = {}
        self.console = console

    def __enter__(self) -> "BatchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def print(self, *args, **kwargs) -> None:
        self.progress.console.print(*args, **kwargs)

    # ------------------------------------------------------------ runs
    def start_run(self, job: Job) -> None:
        if job.id not in self.runs:
            label = job.config.get("prompt", job.id)
            self.runs[job.id] = self.progress.add_task(f"  {label[:40]}", total=job.total_steps)

    def set_run(self, job: Job, completed: int) -> None:
        if job.id in self.runs:
            self.progress.update(self.runs[job.id], completed=completed)

    def end_run(self, job_id: str) -> None:
        task = self.runs.pop(job_id, None)
        if task is not None:
            self.progress.remove_task(task)

    def follow(self, jobs: list[Job]) -> None:
        """Bars of runs in other processes, from their metrics files."""
        for job in jobs:
            self.start_run(job)
            self.set_run(job, steps_done(job))

    def callbacks(self, job: Job):
        """pipeline.generate's (on_start, on_step) for a run in this process."""
        state = {"offset": 0, "t": time.perf_counter()}

        def on_start(run_dir, trainer):
            stages = job.config.get("stages", [])
            names = [s["name"] for s in stages]
            index = names.index(trainer.stage.name) if trainer.stage.name in names else 0
            state["offset"] = sum(int(s["train"]["steps"]) for s in stages[:index])
            state["step"] = trainer.start_step
            self.start_run(job)
            self.set_run(job, state["offset"] + state["step"])

        def on_step(log):
            state["step"] = state.get("step", 0) + 1
            self.set_run(job, state["offset"] + state["step"])

        return on_start, on_step

    # ------------------------------------------------------------ entries
    def entry_finished(self) -> None:
        self.progress.advance(self.overall)
