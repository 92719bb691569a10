"""The GPU check's behaviour where there is no GPU, and its timing code on tiny settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_gpu_check_says_so_in_one_line_and_runs_nothing_without_cuda(tmp_path):
    out = tmp_path / "gpu-check"
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == ["gpu_check: torch sees no CUDA device here; nothing was run"]
    assert not out.exists()


def test_the_cuda_tests_are_marked_for_the_check():
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          "tests/test_splat.py", "tests/test_raster.py"], capture_output=True, text=True, cwd=REPO, timeout=120)
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert any("test_gsplat_path_matches_cpu_rasteriser" in c for c in collected)
    assert any("test_nvdiffrast_agrees_with_the_torch_rasteriser" in c for c in collected)
    assert len(collected) == 2


def test_gpu_timings_run_on_tiny_settings():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_timings.py"), "--device", "cpu", "--tiny",
                          "--steps", "2"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    labels = [r.split("|")[1].strip() for r in rows]
    assert labels == ["fast / main", "gaussian / gaussians", "gaussian / texture", "tiny UNet + VAE SDS step"]
    assert all(float(r.split("|")[2]) > 0 for r in rows)
