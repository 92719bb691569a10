"""One batch entry as a unit of work: plain data in (`Job`), plain data out (`Outcome`).

`execute` runs wherever it is sent (this process, a local worker process, a Ray
worker) and decides from the run folder alone what is left to do: nothing (the run
finished, only its record was missing), resume from the last checkpoint, or start
afresh. So a retry after a lost worker continues where that worker's last
checkpoint left off.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dream3d.errors import UserError

EVAL_KEYS = ("object_accuracy", "colour_accuracy", "r_precision", "view_accuracy", "janus_rate")


@dataclass
class Job:
    id: str
    """The entry's id (and folder name)."""
    run_dir: str
    """Absolute path of the run folder."""
    config: dict[str, Any]
    """The resolved run config as plain data (what config.yaml holds)."""
    total_steps: int
    """Steps of all stages together, for progress bars."""
    evaluate: bool = True
    """Score the finished asset with the shipped classifier (eval.json)."""


@dataclass
class Outcome:
    id: str
    ok: bool
    error: str | None = None
    permanent: bool = False
    """The error is the user's (a UserError): another try would fail the same way."""
    interrupted: bool = False
    """Stopped by Ctrl-C after writing a checkpoint; the entry stays queued."""
    resumed_from: int | None = None
    """Steps already done (from checkpoints) when this try started; None for a fresh start."""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    archive: bytes | None = None
    """The run folder as a tar.gz, when it was made where the batch folder is not visible (Ray)."""


def stage_steps(run_dir: Path, config: dict[str, Any]) -> int:
    """Steps done so far over all stages, from their latest checkpoints."""
    from dream3d.runfolder import stage_dir
    from dream3d.training.checkpoint import read_latest

    done = 0
    for stage in config.get("stages", []):
        try:  # a stage name that is not a name is refused by generate, with the key it came from
            latest = read_latest(stage_dir(run_dir, stage["name"]))
        except UserError:  # a garbage latest.json counts as no checkpoint
            continue
        done += latest["step"] if latest else 0
    return done


def run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def eval_summary(result: dict[str, Any]) -> dict[str, Any]:
    summary = {k: result.get(k) for k in EVAL_KEYS if result.get(k) is not None}
    if result.get("note"):
        summary["note"] = result["note"]
    return summary


def _generate(job: Job, run_dir: Path, on_start: Callable | None, on_step: Callable | None) -> int | None:
    """Train and export what is missing; returns the steps a resume started from (None: fresh)."""
    from dream3d import config as config_mod
    from dream3d import pipeline

    if run_status(run_dir) == "done" and (run_dir / "config.yaml").is_file():
        return stage_steps(run_dir, job.config)  # finished before; its record was lost with its process
    done = stage_steps(run_dir, job.config)
    if done > 0 and (run_dir / "config.yaml").is_file():
        pipeline.generate(None, run_dir.parent, resume=run_dir, on_start=on_start, on_step=on_step)
        return done
    for item in run_dir.iterdir():  # a try that died before its first checkpoint: nothing worth keeping
        if item.name != "worker.json":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    cfg = config_mod.build(job.config)
    pipeline.generate(cfg, run_dir.parent, run_dir=run_dir, on_start=on_start, on_step=on_step)
    return None


def execute(job: Job, on_start: Callable | None = None, on_step: Callable | None = None,
            run_dir: Path | None = None) -> Outcome:
    """Run one entry to the end in its folder (`job.run_dir`, or `run_dir` when given).
    Errors become a failed Outcome; Ctrl-C becomes an interrupted one."""
    run_dir = Path(run_dir or job.run_dir)
    t0 = time.perf_counter()
    out = Outcome(job.id, ok=False)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Which process works on the folder now (a person, or a test, can find it here).
        (run_dir / "worker.json").write_text(json.dumps({"host": out.host, "pid": out.pid, "started": time.time()}))
        out.resumed_from = _generate(job, run_dir, on_start, on_step)
        if job.evaluate:
            out.eval = _evaluate(run_dir)
        out.ok = True
    except KeyboardInterrupt:
        out.interrupted, out.error = True, "interrupted"
    except UserError as e:
        out.error, out.permanent = str(e), True
    except Exception as e:  # noqa: BLE001 - any failure of one entry is recorded and the batch goes on
        out.error = f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError), open(run_dir / "error.log", "a") as f:
            f.write(traceback.format_exc())
    out.seconds = round(time.perf_counter() - t0, 2)
    try:
        out.timings = dict(json.loads((run_dir / "run.json").read_text()).get("timings", {}))
    except (OSError, ValueError):
        pass
    return out


def _evaluate(run_dir: Path) -> dict[str, Any]:
    """eval.json's summary; a failed evaluation is reported, it does not fail the run."""
    from dream3d.evaluation.evaluate import evaluate_run

    path = run_dir / "eval.json"
    try:
        if path.is_file() and path.stat().st_mtime >= (run_dir / "run.json").stat().st_mtime:
            return eval_summary(json.loads(path.read_text()))
        return eval_summary(evaluate_run(run_dir))
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}
