"""Where batch jobs run: in this process, or in N local worker processes.

Both offer the small interface the scheduler (runner.py) uses, as does the Ray
executor (ray_runner.py): `free_slots()`, `submit(job)`, `poll(timeout)` ->
finished Outcomes, `running()`, `close()`.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from dream3d.batch.job import Job, Outcome, execute


class InProcessExecutor:
    """One job at a time, here: the run's own progress comes through callbacks."""

    live_progress = True

    def __init__(self, make_callbacks: Callable[[Job], tuple] | None = None):
        # make_callbacks(job) -> (on_start, on_step) of pipeline.generate for that job (the progress bars).
        self.make_callbacks = make_callbacks
        self.done: list[Outcome] = []
        self.current: Job | None = None

    def free_slots(self) -> int:
        # Busy until the scheduler has collected the last outcome, so it is recorded before the next job.
        return 0 if self.current is not None or self.done else 1

    def submit(self, job: Job) -> None:
        self.current = job
        callbacks = self.make_callbacks(job) if self.make_callbacks else (None, None)
        try:
            self.done.append(execute(job, *callbacks))
        finally:
            self.current = None

    def poll(self, timeout: float) -> list[Outcome]:
        done, self.done = self.done, []
        return done

    def running(self) -> list[Job]:
        return [self.current] if self.current else []

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- local worker processes


def _watch_parent(parent: int) -> None:
    """A worker whose batch process died stops at once (the next batch process
    resumes its entry from the checkpoint); otherwise it would go on writing the
    run folder that process then hands to someone else."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def init_worker(cuda_device: str | None, threads: int, parent: int) -> None:
    if cuda_device is not None:  # before anything touches CUDA: the worker sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_device
    if threads > 0 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def local_devices(workers: int) -> list[str | None]:
    """CUDA device per worker (round robin over the GPUs), or None each on a CPU machine."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i % n) for i in range(workers)] if n else [None] * workers


class ProcessExecutor:
    """N worker processes (spawned, so no CUDA or thread state is forked), one job
    each at a time; each slot is its own one-process pool, so it keeps its device
    and a dead worker is replaced without breaking the other slots."""

    live_progress = False

    def __init__(self, workers: int):
        devices = local_devices(workers)
        threads = 0 if devices[0] is not None else max(1, (os.cpu_count() or 1) // workers)
        self.args = [(d, threads, os.getpid()) for d in devices]
        self.pools: list[cf.ProcessPoolExecutor | None] = [None] * workers
        self.jobs: dict[int, tuple[Job, cf.Future]] = {}
        self.devices = devices

    def _pool(self, slot: int) -> cf.ProcessPoolExecutor:
        if self.pools[slot] is None:
            self.pools[slot] = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=self.args[slot])
        return self.pools[slot]

    def free_slots(self) -> int:
        return len(self.pools) - len(self.jobs)

    def submit(self, job: Job) -> None:
        slot = next(i for i in range(len(self.pools)) if i not in self.jobs)
        self.jobs[slot] = (job, self._pool(slot).submit(execute, job))

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.jobs:
            time.sleep(timeout)
            return []
        cf.wait([f for _, f in self.jobs.values()], timeout=timeout, return_when=cf.FIRST_COMPLETED)
        finished = []
        for slot, (job, fut) in list(self.jobs.items()):
            if not fut.done():
                continue
            del self.jobs[slot]
            try:
                finished.append(fut.result())
            except BrokenProcessPool:
                # Killed (out of memory, SIGKILL): a new process takes the slot; the retry resumes.
                self.pools[slot].shutdown(wait=False, cancel_futures=True)
                self.pools[slot] = None
                finished.append(Outcome(job.id, ok=False, error="the worker process died"))
            except Exception as e:  # noqa: BLE001 - e.g. a job that cannot be pickled
                finished.append(Outcome(job.id, ok=False, error=f"{type(e).__name__}: {e}"))
        return finished

    def running(self) -> list[Job]:
        return [job for job, _ in self.jobs.values()]

    def cancel(self) -> None:
        pass  # Ctrl-C reaches the workers too (one process group): each checkpoints and returns

    def close(self) -> None:
        for pool in self.pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
