"""The CLI asks OpenMP for sleeping idle threads before torch loads when the machine is busy
(README, Image to 3D: a spinning second thread on a shared machine multiplied `generate`'s CPU
time), and leaves OpenMP's spinning default on an idle one (where sleeping threads were slower)."""
from __future__ import annotations

import os
import subprocess
import sys


def test_threads_sleep_only_on_a_busy_machine():
    from dream3d.threads import busy_cores, idle_thread_policy

    assert 0.0 <= busy_cores(0.05) <= (os.cpu_count() or 1) + 1e-6
    assert idle_thread_policy(0.3, 2) is None  # idle: OpenMP's spinning default
    assert idle_thread_policy(1.0, 2) == "PASSIVE"  # another job on one of the two cores
    assert idle_thread_policy(3.9, 8) is None and idle_thread_policy(4.0, 8) == "PASSIVE"


def test_a_given_wait_policy_is_kept():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    probe = "import os, dream3d.cli, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() >= 1)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["ACTIVE", "True"]


def test_a_busy_machine_gets_sleeping_threads(monkeypatch):
    from dream3d.threads import set_wait_policy

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env = {}
    set_wait_policy(env, lambda: 1.2)  # another job on one of the two cores
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    set_wait_policy(env, lambda: 0.1)
    assert env == {}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_wait_policy(env, lambda: 2.0)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
