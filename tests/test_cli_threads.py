"""The CLI asks OpenMP for sleeping idle threads before torch loads (README, Image to 3D: a
spinning second thread on a shared machine multiplied `generate`'s CPU time)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import dream3d.cli, os, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() >= 1)"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_a_passive_wait_policy_unless_one_is_given(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [expected, "True"]
