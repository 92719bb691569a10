"""How this process's idle OpenMP threads should wait, from what the machine is doing now."""
from __future__ import annotations

import os


def idle_thread_policy(busy: float, cores: int) -> str | None:
    """The OMP_WAIT_POLICY for this process: "PASSIVE" (idle threads sleep) when other work already
    keeps half the cores busy, else None (OpenMP's default: idle threads spin). Measured on our 2
    cores, 2026-12-02: beside other jobs a spinning second thread made `generate --image` cost 5x
    the CPU time of one thread (README, Image to 3D); on an idle machine sleeping threads made the
    default `generate "a red cube"` take 148 s instead of 93 s."""
    return "PASSIVE" if busy >= 0.5 * cores else None


def busy_cores(interval: float = 0.1) -> float:
    """Cores other processes keep busy now: the non-idle share of /proc/stat's CPU time over `interval`
    (this process sleeps meanwhile), times the cores. A load average would also count the work of a
    run that has just ended. 0 where /proc/stat is not readable."""
    import time

    def totals() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        (t0, i0), _, (t1, i1) = totals(), time.sleep(interval), totals()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (1.0 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)


def set_wait_policy(environ, measure_busy=busy_cores) -> None:
    """Put the wait policy for this machine's load into `environ`, unless it already has one."""
    if "OMP_WAIT_POLICY" not in environ:
        policy = idle_thread_policy(measure_busy(), os.cpu_count() or 1)
        if policy:
            environ["OMP_WAIT_POLICY"] = policy
