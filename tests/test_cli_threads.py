"""The CLI asks OpenMP for sleeping idle threads before torch loads when the machine is busy
(README, Image to 3D: a spinning second thread on a shared machine multiplied `generate`'s CPU
time), and leaves OpenMP's spinning default on an idle one (where sleeping threads were slower)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import os; load = os.getloadavg()[0]; import dream3d.cli, torch; "
         "print(os.environ.get('OMP_WAIT_POLICY'), dream3d.cli.idle_thread_policy(load, os.cpu_count()), "
         "torch.get_num_threads() >= 1)")


def test_threads_sleep_only_on_a_busy_machine():
    from dream3d.cli import idle_thread_policy

    assert idle_thread_policy(0.3, 2) is None  # idle: OpenMP's spinning default
    assert idle_thread_policy(1.0, 2) == "PASSIVE"  # another job on one of the two cores
    assert idle_thread_policy(3.9, 8) is None and idle_thread_policy(4.0, 8) == "PASSIVE"


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_cli_sets_the_wait_policy_before_torch_unless_one_is_given(given):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    policy, chosen, ok = out.stdout.split()
    assert ok == "True"
    assert policy == (given or chosen)  # the user's value kept; else the policy for the load at start
